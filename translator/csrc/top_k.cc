// TopKLogNorm: each row of a search step's logits read once from memory, for
// translator/top_k.py.
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

#include "simd.h"

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

template <typename T>
class TopKLogNormOp : public OpKernel {
 public:
  explicit TopKLogNormOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("k", &k_));
    OP_REQUIRES(ctx, k_ >= 1, tensorflow::errors::InvalidArgument("k must be >= 1, got ", k_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& logits = ctx->input(0);
    OP_REQUIRES(ctx, logits.dims() == 2,
                tensorflow::errors::InvalidArgument("logits must be [rows, vocab], got ",
                                                    logits.shape().DebugString()));
    const int64_t rows = logits.dim_size(0), n = logits.dim_size(1);
    OP_REQUIRES(ctx, k_ <= n,
                tensorflow::errors::InvalidArgument("k = ", k_, " exceeds the vocabulary ", n));
    Tensor *values = nullptr, *indices = nullptr, *log_norm = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({rows, k_}), &values));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({rows, k_}), &indices));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({rows}), &log_norm));
    const T* in = logits.flat<T>().data();
    float* out_values = values->flat<float>().data();
    int32_t* out_indices = indices->flat<int32_t>().data();
    float* out_norm = log_norm->flat<float>().data();
    const int k = k_;
    auto work = [&](int64_t first, int64_t last) {
      for (int64_t i = first; i < last; ++i)
        out_norm[i] = Row(in + i * n, n, k, out_values + i * k, out_indices + i * k);
    };
    auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
    tensorflow::Shard(workers->num_threads, workers->workers, rows, /*cost_per_unit=*/8 * n,
                      work);
  }

 private:
  int k_;
};

}  // namespace

REGISTER_OP("TopKLogNorm")
    .Input("logits: T")
    .Output("values: float")
    .Output("indices: int32")
    .Output("log_norm: float")
    .Attr("T: {float, bfloat16}")
    .Attr("k: int >= 1")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      tensorflow::shape_inference::ShapeHandle logits;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &logits));
      int k;
      TF_RETURN_IF_ERROR(c->GetAttr("k", &k));
      auto rows = c->Dim(logits, 0);
      c->set_output(0, c->Matrix(rows, k));
      c->set_output(1, c->Matrix(rows, k));
      c->set_output(2, c->Vector(rows));
      return absl::OkStatus();
    });

REGISTER_CPU_KERNELS("TopKLogNorm", TopKLogNormOp);
