// SmoothedCrossEntropy and its gradient: the training loss over the vocabulary-wide logits,
// in place of translator/model/loss.py (smoothed_cross_entropy).
//
// logits [N, V] (float32 or bfloat16), labels int32 [N], attr smoothing s ->
//   loss float32 [N] = log Z - (1 - s) z[label] - s mean(z), the cross-entropy against
//                      the target (1 - s) on the label plus s / V on every token;
//   log_norm float32 [N] = log Z = log sum exp(z), kept for the gradient.
// SmoothedCrossEntropyGrad (logits, labels, log_norm, upstream float32 [N]) ->
//   d logits [N, V] in the logits' dtype = upstream (exp(z - log Z) - target).
//
// With TensorFlow's ops (even fused by XLA) this took a cast of the bfloat16 logits to
// float32, a loss pass, a gradient pass and a cast back: 12.4 ms of a ~145 ms training step
// at 1,053 x 8,000 logits. Here each direction reads the bfloat16 logits once from memory
// (the second look at a row, 16 KB, comes from cache) and writes only its outputs.

#include "simd.h"

namespace {

// exp partial sums in float32 over 512 values, their total in float64 (as top_k.cc)
constexpr int64_t kFlush = 512;

struct RowStats {
  float log_norm, sum;  // log sum exp(z) and sum z over the row
};

template <typename T>
RowStats Stats(const T* x, int64_t n) {
  const int64_t full = n / kLanes * kLanes;
  fvec top_lanes = fvec{} - std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < full; j += kLanes) top_lanes = Max(Load(x + j), top_lanes);
  float top = -std::numeric_limits<float>::infinity();
  for (int l = 0; l < kLanes; ++l) top = std::max(top, top_lanes[l]);
  for (int64_t j = full; j < n; ++j) top = std::max(top, Scalar(x[j]));
  if (std::isinf(top) || std::isnan(top))  // a NaN or infinite logit: the loss is NaN
    return {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::quiet_NaN()};
  const fvec shift = fvec{} + top;
  double exp_total = 0.0, total = 0.0;
  fvec exps = {}, values = {};
  for (int64_t j = 0; j < full; j += kLanes) {
    const fvec v = Load(x + j);
    exps += ExpNonPositive(v - shift);
    values += v;
    if ((j + kLanes) % kFlush == 0) {
      for (int l = 0; l < kLanes; ++l) exp_total += exps[l], total += values[l];
      exps = values = fvec{};
    }
  }
  for (int l = 0; l < kLanes; ++l) exp_total += exps[l], total += values[l];
  for (int64_t j = full; j < n; ++j) {
    exp_total += std::exp(static_cast<double>(Scalar(x[j])) - top);
    total += Scalar(x[j]);
  }
  return {top + static_cast<float>(std::log(exp_total)), static_cast<float>(total)};
}

// Checks logits [N, V] and labels [N] with every label in [0, V) (sets ctx's status).
void CheckInputs(OpKernelContext* ctx, const Tensor& logits, const Tensor& labels) {
  OP_REQUIRES(ctx, logits.dims() == 2,
              tensorflow::errors::InvalidArgument("logits must be [rows, vocab], got ",
                                                  logits.shape().DebugString()));
  OP_REQUIRES(ctx, labels.dims() == 1 && labels.dim_size(0) == logits.dim_size(0),
              tensorflow::errors::InvalidArgument("labels must be [", logits.dim_size(0),
                                                  "], got ", labels.shape().DebugString()));
  const auto ids = labels.flat<int32_t>();
  for (int64_t i = 0; i < ids.size(); ++i)
    OP_REQUIRES(ctx, ids(i) >= 0 && ids(i) < logits.dim_size(1),
                tensorflow::errors::InvalidArgument("label ", ids(i), " at row ", i,
                                                    " is outside the vocabulary of ",
                                                    logits.dim_size(1)));
}

void ForEachRow(OpKernelContext* ctx, int64_t rows, int64_t n,
                const std::function<void(int64_t, int64_t)>& work) {
  auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
  tensorflow::Shard(workers->num_threads, workers->workers, rows, /*cost_per_unit=*/8 * n,
                    work);
}

template <typename T>
class SmoothedCrossEntropyOp : public OpKernel {
 public:
  explicit SmoothedCrossEntropyOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("smoothing", &smoothing_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& logits = ctx->input(0);
    const Tensor& labels = ctx->input(1);
    CheckInputs(ctx, logits, labels);
    if (!ctx->status().ok()) return;
    const int64_t rows = logits.dim_size(0), n = logits.dim_size(1);
    Tensor *loss = nullptr, *log_norm = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({rows}), &loss));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({rows}), &log_norm));
    const T* x = logits.flat<T>().data();
    const int32_t* ids = labels.flat<int32_t>().data();
    float* out_loss = loss->flat<float>().data();
    float* out_norm = log_norm->flat<float>().data();
    const float s = smoothing_;
    ForEachRow(ctx, rows, n, [&](int64_t first, int64_t last) {
      for (int64_t r = first; r < last; ++r) {
        const T* row = x + r * n;
        const RowStats stats = Stats(row, n);
        out_norm[r] = stats.log_norm;
        out_loss[r] = stats.log_norm - (1.0f - s) * Scalar(row[ids[r]]) -
                      s * stats.sum / static_cast<float>(n);
      }
    });
  }

 private:
  float smoothing_;
};

template <typename T>
class SmoothedCrossEntropyGradOp : public OpKernel {
 public:
  explicit SmoothedCrossEntropyGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("smoothing", &smoothing_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& logits = ctx->input(0);
    const Tensor& labels = ctx->input(1);
    const Tensor& log_norm = ctx->input(2);
    const Tensor& upstream = ctx->input(3);
    CheckInputs(ctx, logits, labels);
    if (!ctx->status().ok()) return;
    const int64_t rows = logits.dim_size(0), n = logits.dim_size(1);
    for (const Tensor* t : {&log_norm, &upstream})
      OP_REQUIRES(ctx, t->dims() == 1 && t->dim_size(0) == rows,
                  tensorflow::errors::InvalidArgument("log_norm and upstream must be [", rows,
                                                      "], got ", t->shape().DebugString()));
    Tensor* grad = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, logits.shape(), &grad));
    const T* x = logits.flat<T>().data();
    const int32_t* ids = labels.flat<int32_t>().data();
    const float* norms = log_norm.flat<float>().data();
    const float* ups = upstream.flat<float>().data();
    T* out = grad->flat<T>().data();
    const float s = smoothing_, uniform = smoothing_ / static_cast<float>(n);
    ForEachRow(ctx, rows, n, [&](int64_t first, int64_t last) {
      for (int64_t r = first; r < last; ++r) {
        const T* row = x + r * n;
        T* out_row = out + r * n;
        const float up = ups[r];
        const fvec shift = fvec{} + norms[r], scale = fvec{} + up;
        const fvec offset = fvec{} + uniform;
        const int64_t full = n / kLanes * kLanes;
        for (int64_t j = 0; j < full; j += kLanes)
          Store(out_row + j, scale * (ExpNonPositive(Load(row + j) - shift) - offset));
        if (full < n)
          StorePart(out_row + full, 0, n - full,
                    scale * (ExpNonPositive(LoadPart(row + full, 0, n - full) - shift) - offset));
        // the label's own share of the target, subtracted from its (rounded) entry
        const int64_t label = ids[r];
        const float p = std::exp(Scalar(row[label]) - norms[r]);
        out_row[label] = static_cast<T>(up * (p - uniform - (1.0f - s)));
      }
    });
  }

 private:
  float smoothing_;
};

}  // namespace

REGISTER_OP("SmoothedCrossEntropy")
    .Input("logits: T")
    .Input("labels: int32")
    .Output("loss: float")
    .Output("log_norm: float")
    .Attr("T: {float, bfloat16}")
    .Attr("smoothing: float")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      tensorflow::shape_inference::ShapeHandle logits;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &logits));
      c->set_output(0, c->Vector(c->Dim(logits, 0)));
      c->set_output(1, c->Vector(c->Dim(logits, 0)));
      return absl::OkStatus();
    });

REGISTER_OP("SmoothedCrossEntropyGrad")
    .Input("logits: T")
    .Input("labels: int32")
    .Input("log_norm: float")
    .Input("upstream: float")
    .Output("grad: T")
    .Attr("T: {float, bfloat16}")
    .Attr("smoothing: float")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(0));
      return absl::OkStatus();
    });

REGISTER_CPU_KERNELS("SmoothedCrossEntropy", SmoothedCrossEntropyOp);
REGISTER_CPU_KERNELS("SmoothedCrossEntropyGrad", SmoothedCrossEntropyGradOp);
