// TopKLogNorm: each row of a search step's logits read once from memory, for
// the searches (translator/kernels/operations.py, SearchLogits).
//
// logits [N, V] (float32 or bfloat16) -> values float32 [N, k], indices int32 [N, k] (the
// k largest logits of each row, largest first, the lower index first among equal values,
// as tf.math.top_k), log_norm float32 [N] (log of the sum of exp over the row).
//
// The searches need exactly these three things from the vocabulary-wide logits. Built from
// TensorFlow ops they take a cast, a chunked maximum, two top-k and a softmax: five passes
// over [N, V], as long as the output matmul itself (see bench/README.md). Here a row (16 KB
// of bfloat16 for 8,000 tokens) is scanned once for its maximum and a bound on its k-th
// value, then once more, from cache, for the sum of exponentials and the few values that
// can be in the top k (see Row).

#include "gemm.h"

namespace {

constexpr int kGroup = 4 * kLanes;  // values per step of the scans
constexpr float kInf = std::numeric_limits<float>::infinity();

// The k best values seen so far, largest first, the lower index first among equal values
// (tf.math.top_k's order) as long as values are offered in index order.
class TopK {
 public:
  TopK(int k, float* values, int32_t* indices) : k_(k), values_(values), indices_(indices) {}

  void Offer(float v, int64_t j) {
    if ((filled_ == k_ && !(v > values_[k_ - 1])) || std::isnan(v)) return;
    int pos = filled_ < k_ ? filled_ : k_ - 1;  // after every kept value >= v
    while (pos > 0 && values_[pos - 1] < v) {
      values_[pos] = values_[pos - 1];
      indices_[pos] = indices_[pos - 1];
      --pos;
    }
    values_[pos] = v;
    indices_[pos] = static_cast<int32_t>(j);
    if (filled_ < k_) ++filled_;
  }

  // What a value must beat to enter: the k-th best, or -inf until k values are kept.
  float Bound() const { return filled_ == k_ ? values_[k_ - 1] : -kInf; }
  int k() const { return k_; }
  int filled() const { return filled_; }

  void Finish() {  // only a row with NaNs offers fewer than k values
    for (int i = filled_; i < k_; ++i) {
      values_[i] = -kInf;
      indices_[i] = 0;
    }
  }

 private:
  int k_, filled_ = 0;
  float* values_;
  int32_t* indices_;
};

// One row: its top k (values, indices) and returns log(sum(exp(x))). Two passes over the
// row (16 KB of bfloat16 for 8,000 tokens: the second reads it from cache).
//
// Pass 1 keeps kGroup running maxima, one per position modulo kGroup. They are kGroup
// values of the row, so the k-th largest of them is a lower bound T on the row's k-th
// largest value, and the largest is the row's maximum. Pass 2 sums exp(x - maximum) and
// offers the top-k only the values >= T (usually a few dozen of 8,000), in index order.
template <typename T>
float Row(const T* x, int64_t n, int k, float* values, int32_t* indices) {
  const int64_t full = n / kGroup * kGroup;
  float bound = -kInf, top = -kInf;
  if (full > 0) {
    fvec lanes[4] = {Load(x), Load(x + kLanes), Load(x + 2 * kLanes), Load(x + 3 * kLanes)};
    for (int64_t j = kGroup; j < full; j += kGroup)
      for (int v = 0; v < 4; ++v) lanes[v] = Max(Load(x + j + v * kLanes), lanes[v]);
    float maxima[kGroup];
    std::memcpy(maxima, lanes, sizeof maxima);
    if (k <= kGroup) {
      std::nth_element(maxima, maxima + k - 1, maxima + kGroup, std::greater<float>());
      bound = maxima[k - 1];
    }
    top = *std::max_element(maxima, maxima + kGroup);
  }
  for (int64_t j = full; j < n; ++j) top = std::max(top, Scalar(x[j]));

  TopK best(k, values, indices);
  const bool finite = !(std::isinf(top) || std::isnan(top));
  const fvec shift = fvec{} + (finite ? top : 0.0f);
  const fvec threshold = fvec{} + bound;
  double total = 0.0;
  fvec sum = {};
  for (int64_t j = 0; j < full; j += kGroup) {
    const fvec a = Load(x + j), b = Load(x + j + kLanes);
    const fvec c = Load(x + j + 2 * kLanes), d = Load(x + j + 3 * kLanes);
    sum += (ExpNonPositive(a - shift) + ExpNonPositive(b - shift)) +
           (ExpNonPositive(c - shift) + ExpNonPositive(d - shift));
    if (AnyAtLeast(Max(Max(a, b), Max(c, d)), threshold))
      for (int64_t i = j; i < j + kGroup; ++i)
        if (Scalar(x[i]) >= bound) best.Offer(Scalar(x[i]), i);
    if ((j / kGroup) % 8 == 7) {  // float32 partial sums of 512 values, their total in float64
      for (int l = 0; l < kLanes; ++l) total += sum[l];
      sum = fvec{};
    }
  }
  for (int l = 0; l < kLanes; ++l) total += sum[l];
  for (int64_t j = full; j < n; ++j) {
    best.Offer(Scalar(x[j]), j);
    total += std::exp(static_cast<double>(Scalar(x[j])) - top);
  }
  best.Finish();
  if (!finite) return top;  // all -inf, or an inf or NaN logit
  return top + static_cast<float>(std::log(total));
}

// What both ops share: the attr k (>= 1), how many of each row's best they return, and
// their outputs.
class TopKKernel : public OpKernel {
 public:
  explicit TopKKernel(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("k", &k_));
    OP_REQUIRES(ctx, k_ >= 1, tensorflow::errors::InvalidArgument("k must be >= 1, got ", k_));
  }

 protected:
  struct Outputs {
    float* values = nullptr;     // [rows, k]
    int32_t* indices = nullptr;  // [rows, k]
    float* log_norm = nullptr;   // [rows]
  };

  // Checks k against the vocabulary and allocates the outputs; on failure the context's
  // status says why (the caller returns when it is not ok).
  void Allocate(OpKernelContext* ctx, int64_t rows, int64_t vocab, Outputs* out) {
    OP_REQUIRES(ctx, k_ <= vocab,
                tensorflow::errors::InvalidArgument("k = ", k_, " exceeds the vocabulary ",
                                                    vocab));
    Tensor *values = nullptr, *indices = nullptr, *log_norm = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({rows, k_}), &values));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({rows, k_}), &indices));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({rows}), &log_norm));
    *out = {values->flat<float>().data(), indices->flat<int32_t>().data(),
            log_norm->flat<float>().data()};
  }

  int k_;
};

template <typename T>
class TopKLogNormOp : public TopKKernel {
 public:
  using TopKKernel::TopKKernel;

  void Compute(OpKernelContext* ctx) override {
    const Tensor& logits = ctx->input(0);
    OP_REQUIRES(ctx, logits.dims() == 2,
                tensorflow::errors::InvalidArgument("logits must be [rows, vocab], got ",
                                                    logits.shape().DebugString()));
    const int64_t rows = logits.dim_size(0), n = logits.dim_size(1);
    Outputs out;
    Allocate(ctx, rows, n, &out);
    if (!ctx->status().ok()) return;
    const T* in = logits.flat<T>().data();
    float* out_values = out.values;
    int32_t* out_indices = out.indices;
    float* out_norm = out.log_norm;
    const int k = k_;
    auto work = [&](int64_t first, int64_t last) {
      for (int64_t i = first; i < last; ++i)
        out_norm[i] = Row(in + i * n, n, k, out_values + i * k, out_indices + i * k);
    };
    auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
    tensorflow::Shard(workers->num_threads, workers->workers, rows, /*cost_per_unit=*/8 * n,
                      work);
  }

};

// Both ops' outputs: values and indices [rows, k], log_norm [rows], rows those of input 0.
absl::Status TopKShape(tensorflow::shape_inference::InferenceContext* c) {
  tensorflow::shape_inference::ShapeHandle input;
  TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &input));
  int k;
  TF_RETURN_IF_ERROR(c->GetAttr("k", &k));
  auto rows = c->Dim(input, 0);
  c->set_output(0, c->Matrix(rows, k));
  c->set_output(1, c->Matrix(rows, k));
  c->set_output(2, c->Vector(rows));
  return absl::OkStatus();
}

}  // namespace

REGISTER_OP("TopKLogNorm")
    .Input("logits: T")
    .Output("values: float")
    .Output("indices: int32")
    .Output("log_norm: float")
    .Attr("T: {float, bfloat16}")
    .Attr("k: int >= 1")
    .SetShapeFn(TopKShape);

REGISTER_CPU_KERNELS("TopKLogNorm", TopKLogNormOp);

// ---- the output projection and the top k in one pass: ProjectTopK --------------------
//
// A search step's logits are features [N, K] @ W [K, V] + bias, and TopKLogNorm above
// needs them written out and read back: 1,280 x 8,000 values per step at beam 5, batch 256.
// ProjectTopK computes them a block at a time (gemm.h's micro-kernel, W packed once per
// search by PackWeights) and folds each block into its rows' running top k and
// log-normaliser while it is in L1: the logits never reach memory.
//
// Each row keeps (max, sum of exp(x - max)) over the columns seen so far; a block with a
// larger maximum rescales the sum by exp(old max - new max). Blocks are visited in column
// order, so the top k's order among equal values is TopKLogNorm's.

namespace {

constexpr int64_t kChunkBytes = 256 * 1024;  // packed W per column chunk: stays in L2

struct RowFold {
  float max = -kInf;
  double sum = 0.0;  // of exp(logit - max); NaN after a NaN logit
};

// exp(x - m) for x <= m, given m * log2(e): 2^t, t = x log2(e) - m log2(e) = i + r with i
// an integer and |r| <= 1/2, 2^r by its Taylor polynomial of degree 6 (relative error
// ~1e-7; t's rounding adds ~1e-6 for |m| ~ 20), 2^i into the exponent (AVX-512's scalef
// instruction, else the exponent bits as in ExpNonPositive). t below -126 counts as -126;
// a NaN stays NaN. About half of ExpNonPositive's instructions.
inline fvec ExpBelow(fvec x, fvec m_log2e) {
  fvec t = x * 1.44269504088896341f - m_log2e;
  t = t < -126.0f ? fvec{} - 126.0f : t;
#if defined(__AVX512F__)
  const fvec i = reinterpret_cast<fvec>(_mm512_roundscale_ps(
      reinterpret_cast<__m512>(t), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#else
  const fvec magic = fvec{} + 12582912.0f;  // 1.5 * 2^23: the sum's low bits hold round(t)
  const fvec i = (t + magic) - magic;
#endif
  const fvec r = t - i;
  fvec p = r * 1.5403530393381609e-4f + 1.3333558146428443e-3f;
  p = p * r + 9.6181291076284772e-3f;
  p = p * r + 5.5504108664821580e-2f;
  p = p * r + 2.4022650695910071e-1f;
  p = p * r + 6.9314718055994531e-1f;
  p = p * r + 1.0f;
#if defined(__AVX512F__)
  return reinterpret_cast<fvec>(
      _mm512_scalef_ps(reinterpret_cast<__m512>(p), reinterpret_cast<__m512>(i)));
#else
  const ivec e = __builtin_convertvector(i, ivec);
  return p * reinterpret_cast<fvec>((e + 127) << 23);
#endif
}

// Folds one row's block of logits x [n] (bias added) at column `first` into the row's
// running max, sum and top k. lanes: kLanes maxima of disjoint parts of the block (the
// largest is the block's maximum; the k-th largest, a bound on the block's k-th value).
inline void Fold(const float* x, fvec lanes, int64_t n, int64_t first, RowFold& row,
                 TopK& best) {
  float maxima[kLanes];
  Store(maxima, lanes);
  const int k = best.k();
  float bound = best.Bound();
  if (k <= kLanes && bound == -kInf) {  // before the row's first k values: the block's bound
    std::nth_element(maxima, maxima + k - 1, maxima + kLanes, std::greater<float>());
    bound = maxima[k - 1];
  }
  const float block_max = *std::max_element(maxima, maxima + kLanes);
  if (block_max > row.max) {
    if (row.max > -kInf) row.sum *= std::exp(static_cast<double>(row.max) - block_max);
    row.max = block_max;
  }
  // every logit so far -inf, or an inf: the sum is not needed (log_norm is the max)
  const bool finite = !std::isinf(row.max);
  const fvec shift = fvec{} + (finite ? row.max * 1.44269504088896341f : 0.0f);
  const int64_t full = n / kLanes * kLanes;
  fvec sum = {}, at_least = fvec{} + bound;
  for (int64_t j = 0; j < full; j += kLanes) {
    const fvec v = Load(x + j);
    sum += ExpBelow(v, shift);
    uint32_t hits = AtLeastMask(v, at_least);
    if (hits == 0) continue;
    for (; hits != 0; hits &= hits - 1) {  // in index order: ties keep the lower index first
      const int l = __builtin_ctz(hits);
      best.Offer(x[j + l], first + j + l);
    }
    at_least = fvec{} + std::max(bound, best.Bound());
  }
  double total = 0.0;
  for (int l = 0; l < kLanes; ++l) total += sum[l];
  for (int64_t j = full; j < n; ++j) {
    best.Offer(x[j], first + j);
    total += std::exp(static_cast<double>(x[j]) - row.max);
  }
  if (finite) row.sum += total;
}

// Row r's log-normaliser from its parts' running max and sum (part q's at folds[q * rows
// + r]), and its top k from theirs (sorted, part q's columns all before part q + 1's: on
// equal values the lower part first keeps the lower index first).
inline float Merge(int64_t r, int64_t rows, int64_t parts, int k, const RowFold* folds,
                   const char* nan, const float* values, const int32_t* indices,
                   float* out_values, int32_t* out_indices) {
  float max = -kInf;
  bool any_nan = false;
  for (int64_t q = 0; q < parts; ++q) {
    max = std::max(max, folds[q * rows + r].max);
    any_nan |= nan[q * rows + r] != 0;
  }
  double sum = 0.0;
  for (int64_t q = 0; q < parts; ++q) {
    const RowFold& part = folds[q * rows + r];
    if (part.max > -kInf && !std::isinf(max))
      sum += part.sum * std::exp(static_cast<double>(part.max) - max);
  }
  std::vector<int> next(parts, 0);
  for (int i = 0; i < k; ++i) {
    int64_t from = -1;
    for (int64_t q = 0; q < parts; ++q) {
      const int64_t at = (q * rows + r) * k + next[q];
      if (next[q] < k && (from < 0 || values[at] > values[(from * rows + r) * k + next[from]]))
        from = q;
    }
    const int64_t at = (from * rows + r) * k + next[from]++;
    out_values[i] = values[at];
    out_indices[i] = indices[at];
  }
  if (any_nan) return std::numeric_limits<float>::quiet_NaN();
  return std::isinf(max) ? max : max + static_cast<float>(std::log(sum));
}

template <typename T>
class ProjectTopKOp : public TopKKernel {
 public:
  using TopKKernel::TopKKernel;

  void Compute(OpKernelContext* ctx) override {
    const Tensor &features = ctx->input(0), &packed = ctx->input(1), &bias = ctx->input(2);
    OP_REQUIRES(ctx, features.dims() == 2 && bias.dims() == 1 && packed.dims() == 1,
                tensorflow::errors::InvalidArgument(
                    "features must be [rows, depth], packed and bias vectors; got ",
                    features.shape().DebugString(), ", ", packed.shape().DebugString(), ", ",
                    bias.shape().DebugString()));
    const int64_t rows = features.dim_size(0), depth = features.dim_size(1);
    const int64_t vocab = bias.dim_size(0);
    OP_REQUIRES(ctx, packed.NumElements() == PackedB<T>::Words(depth, vocab),
                tensorflow::errors::InvalidArgument(
                    "packed weights hold ", packed.NumElements(), " words; [", depth, ", ",
                    vocab, "] packs into ", PackedB<T>::Words(depth, vocab),
                    " (packed by PackWeights for other sizes or dtype?)"));
    Outputs out;
    Allocate(ctx, rows, vocab, &out);
    if (!ctx->status().ok() || rows == 0) return;
    const PackedB<T> w(depth, vocab, reinterpret_cast<const uint32_t*>(packed.flat<int32_t>().data()));
    const T* x = features.flat<T>().data();
    // the bias over the padded columns: -inf past the vocabulary, out of every maximum
    std::vector<float> padded_bias(w.n_pad, -kInf);
    std::copy_n(bias.flat<float>().data(), vocab, padded_bias.data());
    float *out_values = out.values, *out_norm = out.log_norm;
    int32_t* out_indices = out.indices;
    const int k = k_;
    const int64_t panel_bytes = 4 * PackedB<T>::Depth(depth) * kPanel;
    const int64_t chunk_panels = std::max<int64_t>(1, kChunkBytes / panel_bytes);
    const int64_t panels = w.n_pad / kPanel, width = chunk_panels * kPanel;
    // Each worker thread takes a contiguous share of the columns for every row: it reads
    // only its share of W (at a few rows the op is bound by reading W), and its rows'
    // features stay in its cache. Then each row's parts are merged.
    auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
    const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(workers->num_threads, panels));
    std::vector<float> part_values(parts * rows * k);
    std::vector<int32_t> part_indices(parts * rows * k);
    std::vector<RowFold> part_folds(parts * rows);
    std::vector<char> part_nan(parts * rows);
    auto run = [&](int64_t part) {
      const int64_t begin = panels * part / parts, end = panels * (part + 1) / parts;
      const int64_t part_columns = std::min(vocab, end * kPanel) - begin * kPanel;
      RowFold* folds = part_folds.data() + part * rows;
      std::vector<TopK> best;
      best.reserve(rows);
      for (int64_t r = 0; r < rows; ++r)
        best.emplace_back(k, part_values.data() + (part * rows + r) * k,
                          part_indices.data() + (part * rows + r) * k);
      std::vector<float> block(kRows * width);
      for (int64_t p0 = begin; p0 < end; p0 += chunk_panels) {
        const int64_t p1 = std::min(end, p0 + chunk_panels);
        const int64_t columns = std::min(vocab, p1 * kPanel) - p0 * kPanel;
        for (int64_t r0 = 0; r0 < rows; r0 += kRows) {
          const int64_t n = std::min<int64_t>(kRows, rows - r0);
          fvec top[kRows];
          for (fvec& t : top) t = fvec{} - kInf;
          for (int64_t p = p0; p < p1; ++p) {
            // the bias added, and each row's maximum kept, while the block is in registers
            const float* panel_bias = padded_bias.data() + p * kPanel;
            const StoreRows store{block.data() + (p - p0) * kPanel, width};
            auto finish = [&](int r, Quad q) {
              for (int v = 0; v < 4; ++v) {
                q.v[v] += Load(panel_bias + v * kLanes);
                top[r] = Max(q.v[v], top[r]);
              }
              store(r, q);
            };
            if (n == kRows) Panel<kRows>(x + r0 * depth, depth, w, p, finish);
            else PanelTail<kRows - 1>(n, x + r0 * depth, depth, w, p, finish);
          }
          for (int64_t r = 0; r < n; ++r)
            Fold(block.data() + r * width, top[r], columns, p0 * kPanel, folds[r0 + r],
                 best[r0 + r]);
        }
      }
      // fewer values offered than the part has (up to k): the part has NaN logits
      for (int64_t r = 0; r < rows; ++r) {
        part_nan[part * rows + r] = best[r].filled() < std::min<int64_t>(k, part_columns);
        best[r].Finish();
      }
    };
    ForEachPart(ctx, parts, run);
    for (int64_t r = 0; r < rows; ++r)
      out_norm[r] = Merge(r, rows, parts, k, part_folds.data(), part_nan.data(),
                          part_values.data(), part_indices.data(), out_values + r * k,
                          out_indices + r * k);
  }

};

}  // namespace

REGISTER_OP("ProjectTopK")
    .Input("features: T")
    .Input("packed: int32")
    .Input("bias: float")
    .Output("values: float")
    .Output("indices: int32")
    .Output("log_norm: float")
    .Attr("T: {float, bfloat16}")
    .Attr("k: int >= 1")
    .SetShapeFn(TopKShape);

REGISTER_CPU_KERNELS("ProjectTopK", ProjectTopKOp);
