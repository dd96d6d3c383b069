// The project's compiled kernels, loaded by translator/native.py (which compiles this file on
// first use; without a compiler everything runs on TensorFlow's own ops instead).
//
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
//
// LstmCell, LstmCellGrad: see below.

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
// Taylor polynomial of degree 7, 2^m written straight into the float's exponent bits. m is
// rounded by adding and subtracting 1.5 * 2^23 (the sum's low mantissa bits then hold m).
inline f32x16 ExpNonPositive(f32x16 x) {
  const f32x16 floor_x = f32x16{} - 87.0f;  // e^x below float's smallest normal counts as 0
  x = x > floor_x ? x : floor_x;
  const f32x16 magic = f32x16{} + 12582912.0f;
  const f32x16 shifted = x * 1.44269504088896341f + magic;
  const f32x16 mf = shifted - magic;
  const i32x16 m = reinterpret_cast<i32x16>(shifted) - reinterpret_cast<i32x16>(magic);
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

// 1 / d for d >= 1: a 14-bit estimate and one Newton step where the machine has the
// estimate instruction (a full division is several times slower), else a division.
inline f32x16 Reciprocal(f32x16 d) {
#if defined(__AVX512F__)
  const f32x16 r = reinterpret_cast<f32x16>(_mm512_rcp14_ps(reinterpret_cast<__m512>(d)));
  return r * (2.0f - d * r);
#else
  return 1.0f / d;
#endif
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

// ---- LstmCell and LstmCellGrad: one LSTM step's gate arithmetic, forward and backward ----
//
// translator/recurrence.py runs the LSTM step by step; between its matmuls a step is a
// dozen element-wise TensorFlow ops forward (cast, split, three sigmoids, two tanh, ...)
// and two dozen backward, each a kernel launch and a pass over [batch, 4 x units]. These
// two ops do each direction in one pass. Gates in Keras' order: input, forget, candidate,
// output; sigmoid and tanh from the same exp as above (absolute error below 1e-6).

inline void Store(float* out, f32x16 v) { std::memcpy(out, &v, sizeof v); }

inline void Store(tensorflow::bfloat16* out, f32x16 v) {  // round to nearest even, as tf.cast
  u32x16 bits = reinterpret_cast<u32x16>(v);
  bits += ((bits >> 16) & 1u) + 0x7fffu;
  const u32x16 nan = reinterpret_cast<u32x16>(v != v);
  bits = (bits & ~nan) | (nan & 0x7fc00000u);
  const u16x16 half = __builtin_convertvector(bits >> 16, u16x16);
  std::memcpy(out, &half, sizeof half);
}

inline f32x16 Abs(f32x16 x) {
  return reinterpret_cast<f32x16>(reinterpret_cast<u32x16>(x) & 0x7fffffffu);
}

inline f32x16 Sigmoid(f32x16 x) {
  const f32x16 e = ExpNonPositive(-Abs(x));
  const f32x16 s = Reciprocal(1.0f + e);
  return x >= 0.0f ? s : e * s;
}

inline f32x16 Tanh(f32x16 x) {
  const f32x16 e = ExpNonPositive(-2.0f * Abs(x));
  const f32x16 t = (1.0f - e) * Reciprocal(1.0f + e);
  return x >= 0.0f ? t : -t;
}

// Runs fn(row, column) over [rows, units] in steps of kLanes columns; a last partial step
// runs on copies padded to kLanes (fn reads and writes through the Lane helpers below).
template <typename Fn>
void ForEachBlock(OpKernelContext* ctx, int64_t rows, int64_t units, Fn fn) {
  auto work = [&](int64_t first, int64_t last) {
    for (int64_t r = first; r < last; ++r)
      for (int64_t j = 0; j < units; j += kLanes) fn(r, j);
  };
  if (rows * units < (int64_t{1} << 16)) {  // a training step's 64 x 256: no thread hand-off
    work(0, rows);
    return;
  }
  auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
  tensorflow::Shard(workers->num_threads, workers->workers, rows, 40 * units, work);
}

// kLanes values from x + j of a row of `units` values, zeros past its end.
template <typename T>
inline f32x16 LoadPart(const T* x, int64_t j, int64_t units) {
  if (j + kLanes <= units) return Load(x + j);
  T copy[kLanes] = {};
  for (int64_t l = 0; j + l < units; ++l) copy[l] = x[j + l];
  return Load(copy);
}

template <typename T>
inline void StorePart(T* out, int64_t j, int64_t units, f32x16 v) {
  if (j + kLanes <= units) return Store(out + j, v);
  T copy[kLanes];
  Store(copy, v);
  for (int64_t l = 0; j + l < units; ++l) out[j + l] = copy[l];
}

template <typename T>
class LstmCellOp : public OpKernel {
 public:
  explicit LstmCellOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("save", &save_));
  }

  void Compute(OpKernelContext* ctx) override {
    tensorflow::OpInputList parts;
    OP_REQUIRES_OK(ctx, ctx->input_list("z", &parts));
    const Tensor& c_prev = ctx->input(parts.size());
    OP_REQUIRES(ctx, c_prev.dims() == 2,
                tensorflow::errors::InvalidArgument("c must be [batch, units]"));
    const int64_t rows = c_prev.dim_size(0), units = c_prev.dim_size(1);
    for (const Tensor& z : parts)
      OP_REQUIRES(ctx, z.dims() == 2 && z.dim_size(0) == rows && z.dim_size(1) == 4 * units,
                  tensorflow::errors::InvalidArgument("z must be [batch, 4 * units] = [", rows,
                                                      ", ", 4 * units, "], got ",
                                                      z.shape().DebugString()));
    Tensor *h = nullptr, *c = nullptr, *saved = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({rows, units}), &h));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({rows, units}), &c));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({rows, save_ ? 6 * units : 0}),
                                             &saved));
    std::vector<const T*> zs;
    for (const Tensor& z : parts) zs.push_back(z.flat<T>().data());
    const float* cp = c_prev.flat<float>().data();
    T* h_out = h->flat<T>().data();
    float* c_out = c->flat<float>().data();
    float* s_out = saved->flat<float>().data();
    ForEachBlock(ctx, rows, units, [&](int64_t r, int64_t j) {
      f32x16 pre[4] = {};
      for (const T* z : zs)
        for (int g = 0; g < 4; ++g) pre[g] += LoadPart(z + r * 4 * units + g * units, j, units);
      const f32x16 i = Sigmoid(pre[0]), f = Sigmoid(pre[1]), g = Tanh(pre[2]);
      const f32x16 o = Sigmoid(pre[3]), before = LoadPart(cp + r * units, j, units);
      const f32x16 c_new = f * before + i * g, tanh_c = Tanh(c_new);
      StorePart(h_out + r * units, j, units, o * tanh_c);
      StorePart(c_out + r * units, j, units, c_new);
      if (!save_) return;
      const f32x16 keep[6] = {i, f, g, o, tanh_c, before};
      for (int s = 0; s < 6; ++s) StorePart(s_out + r * 6 * units + s * units, j, units, keep[s]);
    });
  }

 private:
  bool save_;  // write what LstmCellGrad needs (training); searches need only h and c
};

template <typename T>
class LstmCellGradOp : public OpKernel {
 public:
  explicit LstmCellGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& dh_out = ctx->input(0);   // T [batch, units]: gradient of this step's h
    const Tensor& dh_next = ctx->input(1);  // T [batch, units]: through the next step's matmul
    const Tensor& dc_out = ctx->input(2);   // float [batch, units]: gradient of this step's c
    const Tensor& dc_next = ctx->input(3);  // float [batch, units]: from the next step
    const Tensor& saved = ctx->input(4);    // float [batch, 6 * units]: from LstmCell
    OP_REQUIRES(ctx, saved.dims() == 2 && saved.dim_size(1) % 6 == 0,
                tensorflow::errors::InvalidArgument("saved must be [batch, 6 * units]"));
    const int64_t rows = saved.dim_size(0), units = saved.dim_size(1) / 6;
    for (const Tensor* t : {&dh_out, &dh_next, &dc_out, &dc_next})
      OP_REQUIRES(ctx, t->dims() == 2 && t->dim_size(0) == rows && t->dim_size(1) == units,
                  tensorflow::errors::InvalidArgument("gradients must be [batch, units] = [",
                                                      rows, ", ", units, "], got ",
                                                      t->shape().DebugString()));
    Tensor *dz = nullptr, *dc_prev = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({rows, 4 * units}), &dz));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({rows, units}), &dc_prev));
    const T *a = dh_out.flat<T>().data(), *b = dh_next.flat<T>().data();
    const float *c1 = dc_out.flat<float>().data(), *c2 = dc_next.flat<float>().data();
    const float* s = saved.flat<float>().data();
    T* dz_out = dz->flat<T>().data();
    float* dc_out_prev = dc_prev->flat<float>().data();
    ForEachBlock(ctx, rows, units, [&](int64_t r, int64_t j) {
      const float* row = s + r * 6 * units;
      const f32x16 i = LoadPart(row, j, units), f = LoadPart(row + units, j, units);
      const f32x16 g = LoadPart(row + 2 * units, j, units);
      const f32x16 o = LoadPart(row + 3 * units, j, units);
      const f32x16 tanh_c = LoadPart(row + 4 * units, j, units);
      const f32x16 before = LoadPart(row + 5 * units, j, units), one = f32x16{} + 1.0f;
      const f32x16 dh = LoadPart(a + r * units, j, units) + LoadPart(b + r * units, j, units);
      const f32x16 dc = LoadPart(c1 + r * units, j, units) + LoadPart(c2 + r * units, j, units) +
                        dh * o * (one - tanh_c * tanh_c);
      T* out = dz_out + r * 4 * units;
      StorePart(out, j, units, dc * g * i * (one - i));
      StorePart(out + units, j, units, dc * before * f * (one - f));
      StorePart(out + 2 * units, j, units, dc * i * (one - g * g));
      StorePart(out + 3 * units, j, units, dh * tanh_c * o * (one - o));
      StorePart(dc_out_prev + r * units, j, units, dc * f);
    });
  }
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

REGISTER_OP("LstmCell")
    .Input("z: N * T")
    .Input("c: float")
    .Output("h: T")
    .Output("c_new: float")
    .Output("saved: float")
    .Attr("N: int >= 1")
    .Attr("T: {float, bfloat16}")
    .Attr("save: bool = true")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      tensorflow::shape_inference::ShapeHandle state;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(c->num_inputs() - 1), 2, &state));
      bool save;
      TF_RETURN_IF_ERROR(c->GetAttr("save", &save));
      tensorflow::shape_inference::DimensionHandle six;
      TF_RETURN_IF_ERROR(c->Multiply(c->Dim(state, 1), save ? 6 : 0, &six));
      c->set_output(0, state);
      c->set_output(1, state);
      c->set_output(2, c->Matrix(c->Dim(state, 0), six));
      return absl::OkStatus();
    });

REGISTER_OP("LstmCellGrad")
    .Input("dh: T")
    .Input("dh_next: T")
    .Input("dc: float")
    .Input("dc_next: float")
    .Input("saved: float")
    .Output("dz: T")
    .Output("dc_prev: float")
    .Attr("T: {float, bfloat16}")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      tensorflow::shape_inference::ShapeHandle state;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 2, &state));
      tensorflow::shape_inference::DimensionHandle four;
      TF_RETURN_IF_ERROR(c->Multiply(c->Dim(state, 1), 4, &four));
      c->set_output(0, c->Matrix(c->Dim(state, 0), four));
      c->set_output(1, state);
      return absl::OkStatus();
    });

// Each op for float32 and bfloat16.
#define REGISTER_CPU_KERNELS(NAME, OP)                                                     \
  REGISTER_KERNEL_BUILDER(                                                                \
      Name(NAME).Device(tensorflow::DEVICE_CPU).TypeConstraint<float>("T"), OP<float>); \
  REGISTER_KERNEL_BUILDER(Name(NAME)                                                      \
                              .Device(tensorflow::DEVICE_CPU)                             \
                              .TypeConstraint<tensorflow::bfloat16>("T"),                 \
                          OP<tensorflow::bfloat16>)

REGISTER_CPU_KERNELS("TopKLogNorm", TopKLogNormOp);
REGISTER_CPU_KERNELS("LstmCell", LstmCellOp);
REGISTER_CPU_KERNELS("LstmCellGrad", LstmCellGradOp);
