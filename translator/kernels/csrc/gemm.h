// A small dense product for the kernels that read the same weights many times: C [rows,
// n] (float32) = A [rows, k] @ B [k, n], with B packed once (PackedB) and read at every
// time step of a sequence (LstmSequence) or every step of a search (LstmStep, ProjectTopK:
// packed by PackWeights once per search).
//
// Why not TensorFlow's MatMul: an LSTM step's recurrent product is small (64 x 256 x 1024
// in training) and there is one per step; calling it from a TensorFlow loop costs as much
// again in op dispatch and loop bookkeeping as the product itself. And a product whose
// result goes straight into more arithmetic (an LSTM cell, a top k) can hand each block
// of it over while it is in registers (Panel's finish) instead of writing it out.
//
// The micro-kernel holds a block of 6 rows x 64 columns of C in 24 vector registers (2 x 32
// in 8 on a machine without AVX-512) and walks k; B is packed in panels as wide, so that
// each step reads contiguous memory. bfloat16 uses the AVX-512 BF16 dot-product
// instruction (pairs of k at once, float32 accumulation) where the machine has it;
// otherwise, and for float32, B is packed as float32 and the product is a float32
// multiply-add.

#ifndef TRANSLATOR_CSRC_GEMM_H_
#define TRANSLATOR_CSRC_GEMM_H_

#include <type_traits>

#include "simd.h"
#include "tensorflow/core/platform/blocking_counter.h"

namespace {

#if defined(__AVX512F__)
// rows per micro-kernel: 6 x 4 accumulators, 4 vectors of B and one of A take 29 of
// AVX-512's 32 vector registers (4 rows measured 0.8-1.0x as fast)
constexpr int kRows = 6;
#else
constexpr int kRows = 2;  // 8 accumulators, 4 of B, 1 of A: 13 of AVX2's 16 registers
#endif
constexpr int64_t kPanel = 4 * kLanes;  // columns per packed panel and micro-kernel

#if defined(__AVX512BF16__)
constexpr bool kBf16Dot = true;
#else
constexpr bool kBf16Dot = false;
#endif

inline uint16_t Bits(tensorflow::bfloat16 x) {
  uint16_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return bits;
}

// B [k, n] for the micro-kernel, read from words packed by Pack (owned by OwnedPackedB, or
// an op's input tensor: ProjectTopK's weights, packed once per search by PackWeights).
// T: the element type of A (and of the source matrix).
template <typename T>
struct PackedB {
  // bfloat16 on a machine with the dot-product instruction: pairs of k interleaved, as
  // 32-bit words [n_pad / kPanel][ceil(k / 2)][kPanel] (low half: the even k); otherwise
  // float32 bit patterns [n_pad / kPanel][k][kPanel].
  static constexpr bool kPairs = kBf16Dot && std::is_same<T, tensorflow::bfloat16>::value;
  int64_t k = 0, n = 0, n_pad = 0;
  const uint32_t* words = nullptr;

  PackedB(int64_t k_, int64_t n_, const uint32_t* words_)
      : k(k_), n(n_), n_pad(Padded(n_)), words(words_) {}

  static int64_t Padded(int64_t n) { return (n + kPanel - 1) / kPanel * kPanel; }
  static int64_t Depth(int64_t k) { return kPairs ? (k + 1) / 2 : k; }  // words per column
  static int64_t Words(int64_t k, int64_t n) { return Padded(n) * Depth(k); }

  // Packs B [k, n] into out [Words(k, n)]: column nn of B is column source(nn) of src
  // [k, src_n] (row-major), or with transposed of src^T for src [src_n, k]; zero where
  // source(nn) < 0, and in the padding columns.
  template <typename Source>
  static void Pack(const T* src, int64_t k, int64_t n, int64_t src_n, bool transposed,
                   Source source, uint32_t* out) {
    auto at = [&](int64_t kk, int64_t col) {
      return transposed ? src[col * k + kk] : src[kk * src_n + col];
    };
    const int64_t depth = Depth(k);
    std::fill_n(out, Words(k, n), 0u);
    for (int64_t p = 0; p < Padded(n) / kPanel; ++p)
      for (int64_t q = 0; q < depth; ++q) {
        uint32_t* word = out + (p * depth + q) * kPanel;
        for (int64_t c = 0, nn = p * kPanel; c < kPanel && nn < n; ++c, ++nn) {
          const int64_t col = source(nn);
          if (col < 0) continue;
          if constexpr (kPairs) {
            const uint32_t high = 2 * q + 1 < k ? Bits(at(2 * q + 1, col)) : 0;
            word[c] = Bits(at(2 * q, col)) | high << 16;
          } else {
            const float value = Scalar(at(q, col));
            std::memcpy(word + c, &value, sizeof value);
          }
        }
      }
  }

  // B = src [k, n], or with transposed, B = src^T for src [n, k].
  static void Pack(const T* src, int64_t k, int64_t n, bool transposed, uint32_t* out) {
    Pack(src, k, n, n, transposed, [](int64_t nn) { return nn; }, out);
  }

  // The first word of panel p (kPanel columns, Depth(k) words each).
  const uint32_t* Panel(int64_t p) const { return words + p * Depth(k) * kPanel; }
};

// PackedB with its own storage: a kernel that packs its weights once per call.
template <typename T>
struct OwnedPackedB : PackedB<T> {
  std::vector<uint32_t> storage;

  OwnedPackedB(const T* src, int64_t k, int64_t n, bool transposed)
      : PackedB<T>(k, n, nullptr), storage(PackedB<T>::Words(k, n)) {
    PackedB<T>::Pack(src, k, n, transposed, storage.data());
    this->words = storage.data();
  }
  OwnedPackedB(const OwnedPackedB&) = delete;
  OwnedPackedB& operator=(const OwnedPackedB&) = delete;
};

// One row of a panel's result: kPanel columns as 4 vectors (columns v * kLanes ... in
// v[v]). Passed by value: a pointer into the accumulators would keep them in memory.
struct Quad {
  fvec v[4];
};

// A panel's result goes to finish(r, quad) for each of its rows r: finish stores it
// (StoreRows), or adds a bias and folds it into a top k (top_k.cc), or runs the LSTM cell
// on it (lstm_cell.cc).
struct StoreRows {
  float* c;  // the panel's first element of row 0
  int64_t ldc;
  void operator()(int r, Quad q) const {
    for (int v = 0; v < 4; ++v) Store(c + r * ldc + v * kLanes, q.v[v]);
  }
};

// Rows [0, R) of A x one panel, float32 multiply-add. A element (r, kk) at a[r * lda + kk].
template <int R, typename T, typename Finish>
inline void PanelF32(const T* a, int64_t lda, const uint32_t* words, int64_t k,
                     const Finish& finish) {
  const float* b = reinterpret_cast<const float*>(words);  // read through Load's memcpy
  fvec acc[R][4] = {};
  for (int64_t kk = 0; kk < k; ++kk) {
    const float* bk = b + kk * kPanel;
    const fvec b0 = Load(bk), b1 = Load(bk + kLanes), b2 = Load(bk + 2 * kLanes),
               b3 = Load(bk + 3 * kLanes);
    for (int r = 0; r < R; ++r) {
      const float x = Scalar(a[r * lda + kk]);
      acc[r][0] += x * b0;
      acc[r][1] += x * b1;
      acc[r][2] += x * b2;
      acc[r][3] += x * b3;
    }
  }
  // unrolled: a loop over r would index the accumulators, which keeps them in memory
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) finish(r, Quad{{acc[r][0], acc[r][1], acc[r][2], acc[r][3]}});
}

#if defined(__AVX512BF16__)
// The same with bfloat16 pairs: each instruction adds a[2p] b[2p] + a[2p+1] b[2p+1].
template <int R, typename Finish>
inline void PanelBf16(const uint16_t* a, int64_t lda, const uint32_t* b, int64_t k,
                      const Finish& finish) {
  __m512 acc[R][4];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < 4; ++v) acc[r][v] = _mm512_setzero_ps();
  const int64_t whole = k / 2;
  auto step = [&](const uint32_t* bp, auto pair_of_row) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(bp);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(bp + kLanes);
    const __m512bh b2 = (__m512bh)_mm512_loadu_si512(bp + 2 * kLanes);
    const __m512bh b3 = (__m512bh)_mm512_loadu_si512(bp + 3 * kLanes);
    for (int r = 0; r < R; ++r) {
      const __m512bh x = (__m512bh)_mm512_set1_epi32(pair_of_row(r));
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], x, b0);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], x, b1);
      acc[r][2] = _mm512_dpbf16_ps(acc[r][2], x, b2);
      acc[r][3] = _mm512_dpbf16_ps(acc[r][3], x, b3);
    }
  };
  for (int64_t p = 0; p < whole; ++p)
    step(b + p * kPanel, [&](int r) {
      int32_t pair;
      std::memcpy(&pair, a + r * lda + 2 * p, sizeof pair);
      return pair;
    });
  if (k % 2)  // the last k alone, paired with the zero the packing put beside it
    step(b + whole * kPanel, [&](int r) { return int32_t{a[r * lda + k - 1]}; });
  // unrolled: a loop over r would index the accumulators, which keeps them in memory
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
    finish(r, Quad{{reinterpret_cast<fvec>(acc[r][0]), reinterpret_cast<fvec>(acc[r][1]),
                    reinterpret_cast<fvec>(acc[r][2]), reinterpret_cast<fvec>(acc[r][3])}});
}
#endif

// Rows [0, R) of A x panel p of B, handed to finish.
template <int R, typename T, typename Finish>
inline void Panel(const T* a, int64_t lda, const PackedB<T>& b, int64_t panel,
                  const Finish& finish) {
#if defined(__AVX512BF16__)
  if constexpr (PackedB<T>::kPairs) {
    PanelBf16<R>(reinterpret_cast<const uint16_t*>(a), lda, b.Panel(panel), b.k, finish);
    return;
  }
#endif
  PanelF32<R>(a, lda, b.Panel(panel), b.k, finish);
}

// Panel<R> for the R = rows < kRows left at the end of a block of rows.
template <int R, typename T, typename Finish>
inline void PanelTail(int64_t rows, const T* a, int64_t lda, const PackedB<T>& b, int64_t panel,
                      const Finish& finish) {
  if constexpr (R > 0) {
    if (rows == R) return Panel<R>(a, lda, b, panel, finish);
    PanelTail<R - 1>(rows, a, lda, b, panel, finish);
  }
}

// Rows [0, rows) of A x panel p, in blocks of kRows; finish(r0, r, quad) for row r0 + r.
template <typename T, typename Finish>
inline void PanelRows(const T* a, int64_t lda, int64_t rows, const PackedB<T>& b, int64_t panel,
                      const Finish& finish) {
  int64_t r0 = 0;
  auto at = [&](int64_t first) {
    return [&finish, first](int r, Quad q) { finish(first, r, q); };
  };
  for (; r0 + kRows <= rows; r0 += kRows) Panel<kRows>(a + r0 * lda, lda, b, panel, at(r0));
  PanelTail<kRows - 1>(rows - r0, a + r0 * lda, lda, b, panel, at(r0));
}

// c [rows, b.n_pad] (row stride b.n_pad) = a [rows, b.k] (row stride lda) @ B.
template <typename T>
void Gemm(const T* a, int64_t lda, int64_t rows, const PackedB<T>& b, float* c) {
  const int64_t ldc = b.n_pad;
  for (int64_t p = 0; p < b.n_pad / kPanel; ++p)
    PanelRows(a, lda, rows, b, p, [&](int64_t r0, int r, Quad q) {
      StoreRows{c + r0 * ldc + p * kPanel, ldc}(r, q);
    });
}

// An LSTM's gates, packed so that one panel holds the four gates (i, f, g, o: kLanes
// columns each) of the same kLanes units: a panel's result is then exactly what the cell
// needs for those units (lstm_cell.cc, LstmStep), with no pre-activations written out.
// Column nn of the packed B is column Gate(nn) of the stacked kernel [in + units,
// 4 * units] (gate-major), or -1 past the last unit.
struct GateLayout {
  int64_t units;
  static int64_t Columns(int64_t units) { return 4 * ((units + kLanes - 1) / kLanes * kLanes); }
  int64_t operator()(int64_t nn) const {
    const int64_t panel = nn / kPanel, within = nn % kPanel;
    const int64_t gate = within / kLanes, unit = panel * kLanes + within % kLanes;
    return unit < units ? gate * units + unit : -1;
  }
};

// Runs fn(part) for part in [0, parts), each as a task of the op's worker pool, and waits.
// Not TransformRangeConcurrently: that runs one part on the calling thread (an executor
// thread, beside the pool's own on a 2-core machine), and a part then often shared a core
// with a pool thread and took twice as long (seen in the searches' profiles).
template <typename Fn>
void ForEachPart(OpKernelContext* ctx, int64_t parts, Fn fn) {
  auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
  if (parts <= 1 || workers->num_threads <= 1) {
    for (int64_t part = 0; part < parts; ++part) fn(part);
    return;
  }
  tensorflow::BlockingCounter done(static_cast<int>(parts));
  for (int64_t part = 0; part < parts; ++part)
    workers->workers->Schedule([&fn, &done, part] {
      fn(part);
      done.DecrementCount();
    });
  done.Wait();
}

// Runs fn(first, last) over the rows [0, rows) split into one contiguous block per worker
// thread: each block's rows go through the whole computation (every step of a recurrence,
// every column of a product) without waiting for the others, and each thread streams B
// through its own cache once per pass.
template <typename Fn>
void ForEachRowBlock(OpKernelContext* ctx, int64_t rows, Fn fn) {
  auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(workers->num_threads, rows / kRows));
  const int64_t size = (rows + blocks - 1) / blocks;
  ForEachPart(ctx, blocks, [&](int64_t block) {
    fn(block * size, std::min(rows, (block + 1) * size));
  });
}

}  // namespace

#endif  // TRANSLATOR_CSRC_GEMM_H_
