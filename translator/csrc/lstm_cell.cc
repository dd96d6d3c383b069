// LstmCell and LstmCellGrad: one LSTM step's gate arithmetic, forward and backward.
//
// translator/recurrence.py runs the LSTM step by step; between its matmuls a step is a
// dozen element-wise TensorFlow ops forward (cast, split, three sigmoids, two tanh, ...)
// and two dozen backward, each a kernel launch and a pass over [batch, 4 x units]. These
// two ops do each direction in one pass. Gates in Keras' order: input, forget, candidate,
// output; sigmoid and tanh from simd.h (absolute error below 1e-6).

#include "simd.h"

namespace {

// Runs fn(row, column) over [rows, units] in steps of kLanes columns; a last partial step
// runs on copies padded to kLanes (fn reads and writes through LoadPart and StorePart).
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

REGISTER_CPU_KERNELS("LstmCell", LstmCellOp);
REGISTER_CPU_KERNELS("LstmCellGrad", LstmCellGradOp);
