// TopKLogNorm: one pass over each row of a search step's logits, for translator/search.py.
//
// logits [N, V] (float32 or bfloat16) -> values float32 [N, k], indices int32 [N, k] (the
// k largest logits of each row, largest first, the lower index first among equal values,
// as tf.math.top_k), log_norm float32 [N] (log of the sum of exp over the row).
//
// The searches need exactly these three things from the vocabulary-wide logits. Built from
// TensorFlow ops they take a cast, a chunked maximum, two top-k and a softmax: five passes
// over [N, V], as long as the output matmul itself (see bench/README.md). Here each row is
// read once into a float32 buffer that stays in cache, scanned once for the top k and the
// maximum, and once more for the sum of exponentials. translator/native.py compiles this
// file on first use; without a compiler the searches fall back to the TensorFlow ops.

#include <algorithm>
#include <functional>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"
#include "tensorflow/core/util/work_sharder.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;

// 16 floats or ints at once: GCC and Clang compile these to AVX-512, AVX2 or SSE (or NEON)
// instructions as the machine has them.
typedef float f32x16 __attribute__((vector_size(64)));
typedef int32_t i32x16 __attribute__((vector_size(64)));
typedef uint32_t u32x16 __attribute__((vector_size(64)));
typedef uint16_t u16x16 __attribute__((vector_size(32)));
constexpr int kLanes = 16;
constexpr int kGroup = 4 * kLanes;  // values per step of the scans
constexpr float kInf = std::numeric_limits<float>::infinity();

inline f32x16 Load(const float* x) {
  f32x16 v;
  std::memcpy(&v, x, sizeof v);
  return v;
}

inline f32x16 Load(const tensorflow::bfloat16* x) {  // bfloat16: a float32's high half
  u16x16 half;
  std::memcpy(&half, x, sizeof half);
  return reinterpret_cast<f32x16>(__builtin_convertvector(half, u32x16) << 16);
}

inline float Scalar(float x) { return x; }
inline float Scalar(tensorflow::bfloat16 x) { return static_cast<float>(x); }

inline f32x16 Max(f32x16 a, f32x16 b) { return a > b ? a : b; }  // ignores a NaN in a

// Whether any lane of v is >= t: one mask instruction where the machine has one.
inline bool AnyAtLeast(f32x16 v, f32x16 t) {
#if defined(__AVX512F__)
  return _mm512_cmp_ps_mask(reinterpret_cast<__m512>(v), reinterpret_cast<__m512>(t),
                            _CMP_GE_OQ) != 0;
#else
  const i32x16 hit = v >= t;
  int any = 0;
  for (int l = 0; l < kLanes; ++l) any |= hit[l];
  return any != 0;
#endif
}

// exp(x) for x <= 0, relative error below 2e-7: x = m ln2 + r, |r| <= ln2 / 2, e^r by its
// Taylor polynomial of degree 7, 2^m written straight into the float's exponent bits.
inline f32x16 ExpNonPositive(f32x16 x) {
  const f32x16 floor_x = f32x16{} - 87.0f;  // e^x below float's smallest normal counts as 0
  x = x > floor_x ? x : floor_x;
  const f32x16 t = x * 1.44269504088896341f + 0.5f;
  i32x16 m = __builtin_convertvector(t, i32x16);            // rounds toward zero
  m += (__builtin_convertvector(m, f32x16) > t);            // -1 where that rounded up
  const f32x16 mf = __builtin_convertvector(m, f32x16);
  const f32x16 r = (x - mf * 0.693145751953125f) - mf * 1.42860682030941723e-6f;
  f32x16 p = r * (1.0f / 5040.0f) + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  return p * reinterpret_cast<f32x16>((m + 127) << 23);
}

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
    f32x16 lanes[4] = {Load(x), Load(x + kLanes), Load(x + 2 * kLanes), Load(x + 3 * kLanes)};
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
  const f32x16 shift = f32x16{} + (finite ? top : 0.0f);
  const f32x16 threshold = f32x16{} + bound;
  double total = 0.0;
  f32x16 sum = {};
  for (int64_t j = 0; j < full; j += kGroup) {
    const f32x16 a = Load(x + j), b = Load(x + j + kLanes);
    const f32x16 c = Load(x + j + 2 * kLanes), d = Load(x + j + 3 * kLanes);
    sum += (ExpNonPositive(a - shift) + ExpNonPositive(b - shift)) +
           (ExpNonPositive(c - shift) + ExpNonPositive(d - shift));
    if (AnyAtLeast(Max(Max(a, b), Max(c, d)), threshold))
      for (int64_t i = j; i < j + kGroup; ++i)
        if (Scalar(x[i]) >= bound) best.Offer(Scalar(x[i]), i);
    if ((j / kGroup) % 8 == 7) {  // float32 partial sums of 512 values, their total in float64
      for (int l = 0; l < kLanes; ++l) total += sum[l];
      sum = f32x16{};
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

REGISTER_KERNEL_BUILDER(
    Name("TopKLogNorm").Device(tensorflow::DEVICE_CPU).TypeConstraint<float>("T"),
    TopKLogNormOp<float>);
REGISTER_KERNEL_BUILDER(
    Name("TopKLogNorm").Device(tensorflow::DEVICE_CPU).TypeConstraint<tensorflow::bfloat16>("T"),
    TopKLogNormOp<tensorflow::bfloat16>);
