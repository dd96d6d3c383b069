// A small dense product for the recurrences: C [rows, n] (float32) = A [rows, k] @ B [k, n],
// with B packed once (PackedB) and read many times (once per time step of a sequence).
//
// Why not TensorFlow's MatMul: an LSTM step's recurrent product is small (64 x 256 x 1024
// in training) and there is one per step; calling it from a TensorFlow loop costs as much
// again in op dispatch and loop bookkeeping as the product itself. A kernel that runs the
// whole sequence (lstm_cell.cc, LstmSequence) needs the product inside it.
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

// B [k, n] for the micro-kernel, from a row-major matrix src: B = src [k, n], or with
// transposed, B = src^T for src [n, k]. T: the element type of A (and of src).
template <typename T>
struct PackedB {
  // bfloat16 on a machine with the dot-product instruction: pairs of k interleaved, as
  // 32-bit words [n_pad / kPanel][ceil(k / 2)][kPanel] (low half: the even k); otherwise
  // float32 [n_pad / kPanel][k][kPanel].
  static constexpr bool kPairs = kBf16Dot && std::is_same<T, tensorflow::bfloat16>::value;
  int64_t k = 0, n = 0, n_pad = 0;
  std::vector<float> f32;
  std::vector<uint32_t> pairs;

  PackedB(const T* src, int64_t k_, int64_t n_, bool transposed)
      : k(k_), n(n_), n_pad((n_ + kPanel - 1) / kPanel * kPanel) {
    // element (kk, nn) of B
    auto at = [&](int64_t kk, int64_t nn) { return transposed ? src[nn * k + kk] : src[kk * n + nn]; };
    const int64_t panels = n_pad / kPanel;
    if constexpr (kPairs) {
      const int64_t k2 = (k + 1) / 2;
      pairs.assign(panels * k2 * kPanel, 0);
      for (int64_t p = 0; p < panels; ++p)
        for (int64_t q = 0; q < k2; ++q) {
          uint32_t* out = pairs.data() + (p * k2 + q) * kPanel;
          for (int64_t c = 0, nn = p * kPanel; c < kPanel && nn < n; ++c, ++nn) {
            const uint32_t high = 2 * q + 1 < k ? Bits(at(2 * q + 1, nn)) : 0;
            out[c] = Bits(at(2 * q, nn)) | high << 16;
          }
        }
    } else {
      f32.assign(panels * k * kPanel, 0.0f);
      for (int64_t p = 0; p < panels; ++p)
        for (int64_t kk = 0; kk < k; ++kk) {
          float* out = f32.data() + (p * k + kk) * kPanel;
          for (int64_t c = 0, nn = p * kPanel; c < kPanel && nn < n; ++c, ++nn)
            out[c] = Scalar(at(kk, nn));
        }
    }
  }
};

// C rows [m, m + R) x one panel, float32 multiply-add. A element (r, kk) at a[r * lda + kk].
template <int R, typename T>
inline void PanelF32(const T* a, int64_t lda, const float* b, int64_t k, float* c, int64_t ldc) {
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
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < 4; ++v) Store(c + r * ldc + v * kLanes, acc[r][v]);
}

#if defined(__AVX512BF16__)
// The same with bfloat16 pairs: each instruction adds a[2p] b[2p] + a[2p+1] b[2p+1].
template <int R>
inline void PanelBf16(const uint16_t* a, int64_t lda, const uint32_t* b, int64_t k, float* c,
                      int64_t ldc) {
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
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < 4; ++v) _mm512_storeu_ps(c + r * ldc + v * kLanes, acc[r][v]);
}
#endif

template <int R, typename T>
inline void Panel(const T* a, int64_t lda, const PackedB<T>& b, int64_t panel, float* c,
                  int64_t ldc) {
#if defined(__AVX512BF16__)
  if constexpr (PackedB<T>::kPairs) {
    const int64_t k2 = (b.k + 1) / 2;
    PanelBf16<R>(reinterpret_cast<const uint16_t*>(a), lda,
                 b.pairs.data() + panel * k2 * kPanel, b.k, c + panel * kPanel, ldc);
    return;
  }
#endif
  PanelF32<R>(a, lda, b.f32.data() + panel * b.k * kPanel, b.k, c + panel * kPanel, ldc);
}

// Panel<R> for the R = rows < kRows left at the end of a block of rows.
template <int R, typename T>
inline void PanelTail(int64_t rows, const T* a, int64_t lda, const PackedB<T>& b, int64_t panel,
                      float* c, int64_t ldc) {
  if constexpr (R > 0) {
    if (rows == R) return Panel<R>(a, lda, b, panel, c, ldc);
    PanelTail<R - 1>(rows, a, lda, b, panel, c, ldc);
  }
}

// c [rows, b.n_pad] (row stride b.n_pad) = a [rows, b.k] (row stride lda) @ B.
template <typename T>
void Gemm(const T* a, int64_t lda, int64_t rows, const PackedB<T>& b, float* c) {
  const int64_t ldc = b.n_pad;
  for (int64_t p = 0; p < b.n_pad / kPanel; ++p) {
    int64_t r = 0;
    for (; r + kRows <= rows; r += kRows) Panel<kRows>(a + r * lda, lda, b, p, c + r * ldc, ldc);
    PanelTail<kRows - 1>(rows - r, a + r * lda, lda, b, p, c + r * ldc, ldc);
  }
}

}  // namespace

#endif  // TRANSLATOR_CSRC_GEMM_H_
