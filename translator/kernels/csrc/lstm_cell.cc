// The LSTM's compiled ops, all with gates in Keras' order (input, forget, candidate,
// output) and sigmoid and tanh from simd.h (absolute error below 1e-6):
//
// LstmCell and LstmCellGrad: one step's gate arithmetic, forward and backward, for code
// that steps through time itself (the searches' decoder where nothing is packed, else
// LstmStep at the end of this file; input feeding, whose gradient,
// translator.kernels.library's, uses LstmCellGrad): a dozen element-wise TensorFlow ops forward
// (cast, split, three sigmoids, two tanh, ...) and two dozen backward, each a kernel
// launch and a pass over [batch, 4 x units], become one pass each way.
//
// LstmSequence and LstmSequenceGrad: a whole sequence, forward and backward, in one op
// each, the recurrent product inside (gemm.h). In a TensorFlow loop each step's matmul and
// cell op cost as much again in dispatch and bookkeeping as their work; here each worker
// thread carries its own rows of the batch through every step, with no hand-off between
// steps. Batch-major; the encoder's backward direction runs each row from its last real
// token to its first in place (no reversed copies).

#include "gemm.h"

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

// One row's units [j, j + kLanes) forward: the pre-activations pre (i, f, g, o) and the
// previous c -> h and c stored at h_row, c_row; when saved_row is not null, also what
// CellGradBlock reads (i, f, g, o, tanh(c), previous c, each `units` long).
template <typename T>
inline void CellBlock(const fvec pre[4], fvec before, int64_t j, int64_t units, T* h_row,
                      float* c_row, float* saved_row) {
  const fvec i = Sigmoid(pre[0]), f = Sigmoid(pre[1]), g = Tanh(pre[2]), o = Sigmoid(pre[3]);
  const fvec c_new = f * before + i * g, tanh_c = Tanh(c_new);
  StorePart(h_row, j, units, o * tanh_c);
  StorePart(c_row, j, units, c_new);
  if (saved_row == nullptr) return;
  const fvec keep[6] = {i, f, g, o, tanh_c, before};
  for (int s = 0; s < 6; ++s) StorePart(saved_row + s * units, j, units, keep[s]);
}

// The same units backward: dh and dc, the whole gradients reaching this step's h and c
// -> dz (i, f, g, o) at dz_row and the previous c's gradient at dc_prev_row.
template <typename T>
inline void CellGradBlock(const float* saved_row, fvec dh, fvec dc_in, int64_t j,
                          int64_t units, T* dz_row, float* dc_prev_row) {
  const fvec i = LoadPart(saved_row, j, units), f = LoadPart(saved_row + units, j, units);
  const fvec g = LoadPart(saved_row + 2 * units, j, units);
  const fvec o = LoadPart(saved_row + 3 * units, j, units);
  const fvec tanh_c = LoadPart(saved_row + 4 * units, j, units);
  const fvec before = LoadPart(saved_row + 5 * units, j, units), one = fvec{} + 1.0f;
  const fvec dc = dc_in + dh * o * (one - tanh_c * tanh_c);
  StorePart(dz_row, j, units, dc * g * i * (one - i));
  StorePart(dz_row + units, j, units, dc * before * f * (one - f));
  StorePart(dz_row + 2 * units, j, units, dc * i * (one - g * g));
  StorePart(dz_row + 3 * units, j, units, dh * tanh_c * o * (one - o));
  StorePart(dc_prev_row, j, units, dc * f);
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
      fvec pre[4] = {};
      for (const T* z : zs)
        for (int g = 0; g < 4; ++g) pre[g] += LoadPart(z + r * 4 * units + g * units, j, units);
      CellBlock(pre, LoadPart(cp + r * units, j, units), j, units, h_out + r * units,
                c_out + r * units, save_ ? s_out + r * 6 * units : nullptr);
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
      const fvec dh = LoadPart(a + r * units, j, units) + LoadPart(b + r * units, j, units);
      const fvec dc = LoadPart(c1 + r * units, j, units) + LoadPart(c2 + r * units, j, units);
      CellGradBlock(s + r * 6 * units, dh, dc, j, units, dz_out + r * 4 * units,
                    dc_out_prev + r * units);
    });
  }
};

// Where a row's step t sits in its sequence: t, or with reverse (the backward direction
// of the encoder) the row's first `length` positions last to first, then its padding.
inline int64_t Position(bool reverse, int32_t length, int64_t t) {
  return reverse && t < length ? length - 1 - t : t;
}

// Checks what both sequence ops take beside their data: the recurrent kernel [units,
// 4 * units] and lengths [rows] with values in [0, time].
inline void CheckKernelAndLengths(OpKernelContext* ctx, const Tensor& kernel,
                                  const Tensor& lengths, int64_t rows, int64_t time,
                                  int64_t units) {
  OP_REQUIRES(ctx, kernel.shape() == TensorShape({units, 4 * units}),
              tensorflow::errors::InvalidArgument("kernel must be [", units, ", ", 4 * units,
                                                  "], got ", kernel.shape().DebugString()));
  OP_REQUIRES(ctx, lengths.shape() == TensorShape({rows}),
              tensorflow::errors::InvalidArgument("lengths must be [", rows, "], got ",
                                                  lengths.shape().DebugString()));
  const auto values = lengths.flat<int32_t>();
  for (int64_t r = 0; r < rows; ++r)
    OP_REQUIRES(ctx, values(r) >= 0 && values(r) <= time,
                tensorflow::errors::InvalidArgument("lengths[", r, "] = ", values(r),
                                                    " is outside [0, ", time, "]"));
}

// The whole sequence forward, batch-major: z = xw[r, t] + h_{t-1} @ kernel, then the gates,
// step after step, in one op (what translator.model.lstm.lstm_sequence computes). Outputs, at each
// step's position: h, c and, when save, the h the step started from (for the kernel's
// gradient) and what the gradient op reads.
template <typename T>
class LstmSequenceOp : public OpKernel {
 public:
  explicit LstmSequenceOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("reverse", &reverse_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("save", &save_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& xw = ctx->input(0);       // T [batch, time, 4 * units]: x_t @ W + b
    const Tensor& h0 = ctx->input(1);       // T [batch, units]
    const Tensor& c0 = ctx->input(2);       // float [batch, units]
    const Tensor& kernel = ctx->input(3);   // T [units, 4 * units]: the recurrent kernel
    const Tensor& lengths = ctx->input(4);  // int32 [batch]
    OP_REQUIRES(ctx, h0.dims() == 2 && c0.shape() == h0.shape(),
                tensorflow::errors::InvalidArgument("h0 and c0 must be [batch, units], got ",
                                                    h0.shape().DebugString(), " and ",
                                                    c0.shape().DebugString()));
    const int64_t rows = h0.dim_size(0), units = h0.dim_size(1);
    OP_REQUIRES(ctx, xw.dims() == 3 && xw.dim_size(0) == rows && xw.dim_size(2) == 4 * units,
                tensorflow::errors::InvalidArgument("xw must be [", rows, ", time, ", 4 * units,
                                                    "], got ", xw.shape().DebugString()));
    const int64_t time = xw.dim_size(1);
    CheckKernelAndLengths(ctx, kernel, lengths, rows, time, units);
    if (!ctx->status().ok()) return;
    Tensor *hs = nullptr, *cs = nullptr, *h_in = nullptr, *saved = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({rows, time, units}), &hs));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({rows, time, units}), &cs));
    const int64_t kept = save_ ? time : 0;  // h_in and saved only for a gradient
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({rows, kept, units}), &h_in));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, TensorShape({rows, kept, 6 * units}), &saved));
    if (time == 0 || rows == 0 || units == 0) return;
    const OwnedPackedB<T> packed(kernel.flat<T>().data(), units, 4 * units, false);
    const T *x = xw.flat<T>().data(), *h_first = h0.flat<T>().data();
    const float* c_first = c0.flat<float>().data();
    const int32_t* length = lengths.flat<int32_t>().data();
    T *h_out = hs->flat<T>().data(), *h_in_out = h_in->flat<T>().data();
    float *c_out = cs->flat<float>().data(), *s_out = saved->flat<float>().data();
    ForEachRowBlock(ctx, rows, [&](int64_t first, int64_t last) {
      const int64_t n = last - first;
      // the block's current h and c, contiguous: the product's rows
      std::vector<T> h(h_first + first * units, h_first + last * units);
      std::vector<float> c(c_first + first * units, c_first + last * units);
      std::vector<float> z(n * packed.n_pad);
      for (int64_t t = 0; t < time; ++t) {
        Gemm(h.data(), units, n, packed, z.data());
        for (int64_t r = 0; r < n; ++r) {
          const int64_t at = (first + r) * time + Position(reverse_, length[first + r], t);
          if (save_) std::copy_n(h.data() + r * units, units, h_in_out + at * units);
          const T* xr = x + at * 4 * units;
          const float* zr = z.data() + r * packed.n_pad;
          for (int64_t j = 0; j < units; j += kLanes) {
            fvec pre[4];
            for (int g = 0; g < 4; ++g)
              pre[g] = LoadPart(xr + g * units, j, units) + LoadPart(zr + g * units, j, units);
            CellBlock(pre, LoadPart(c.data() + r * units, j, units), j, units,
                      h.data() + r * units, c.data() + r * units,
                      save_ ? s_out + at * 6 * units : nullptr);
          }
          std::copy_n(h.data() + r * units, units, h_out + at * units);
          std::copy_n(c.data() + r * units, units, c_out + at * units);
        }
      }
    });
  }

 private:
  bool reverse_;
  bool save_;  // write h_in and saved (training); a search's encoder needs only h and c
};

// Its gradient: back through the steps, dz from the gates (LstmCellGrad's arithmetic), the
// previous step's dh through dz @ kernel^T. Returns dz at every position (the gradient of
// xw; the kernel's own gradient is one large matmul over them and h_in, left to the
// caller) and the gradients of h0 and c0.
template <typename T>
class LstmSequenceGradOp : public OpKernel {
 public:
  explicit LstmSequenceGradOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("reverse", &reverse_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& dhs = ctx->input(0);      // T [batch, time, units]
    const Tensor& dcs = ctx->input(1);      // float [batch, time, units]
    const Tensor& saved = ctx->input(2);    // float [batch, time, 6 * units]: LstmSequence's
    const Tensor& kernel = ctx->input(3);   // T [units, 4 * units]
    const Tensor& lengths = ctx->input(4);  // int32 [batch]
    OP_REQUIRES(ctx, saved.dims() == 3 && saved.dim_size(2) % 6 == 0,
                tensorflow::errors::InvalidArgument("saved must be [batch, time, 6 * units]"));
    const int64_t rows = saved.dim_size(0), time = saved.dim_size(1);
    const int64_t units = saved.dim_size(2) / 6;
    for (const Tensor* t : {&dhs, &dcs})
      OP_REQUIRES(ctx, t->shape() == TensorShape({rows, time, units}),
                  tensorflow::errors::InvalidArgument("gradients must be [", rows, ", ", time,
                                                      ", ", units, "], got ",
                                                      t->shape().DebugString()));
    CheckKernelAndLengths(ctx, kernel, lengths, rows, time, units);
    if (!ctx->status().ok()) return;
    Tensor *dzs = nullptr, *dh0 = nullptr, *dc0 = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({rows, time, 4 * units}), &dzs));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({rows, units}), &dh0));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, TensorShape({rows, units}), &dc0));
    if (rows == 0 || units == 0) return;
    const OwnedPackedB<T> packed(kernel.flat<T>().data(), 4 * units, units, true);
    const T* dh_in = dhs.flat<T>().data();
    const float *dc_in = dcs.flat<float>().data(), *s = saved.flat<float>().data();
    const int32_t* length = lengths.flat<int32_t>().data();
    T *dz_out = dzs->flat<T>().data(), *dh_first = dh0->flat<T>().data();
    float* dc_first = dc0->flat<float>().data();
    ForEachRowBlock(ctx, rows, [&](int64_t first, int64_t last) {
      const int64_t n = last - first;
      // dh and dc flowing into step t from step t + 1 (zero after the last step), and the
      // block's dz at step t, contiguous: the product's rows
      std::vector<float> dh_next(n * packed.n_pad, 0.0f), dc_next(n * units, 0.0f);
      std::vector<T> dz(n * 4 * units);
      for (int64_t t = time - 1; t >= 0; --t) {
        for (int64_t r = 0; r < n; ++r) {
          const int64_t at = (first + r) * time + Position(reverse_, length[first + r], t);
          for (int64_t j = 0; j < units; j += kLanes) {
            const fvec dh = LoadPart(dh_in + at * units, j, units) +
                              LoadPart(dh_next.data() + r * packed.n_pad, j, units);
            const fvec dc = LoadPart(dc_in + at * units, j, units) +
                              LoadPart(dc_next.data() + r * units, j, units);
            CellGradBlock(s + at * 6 * units, dh, dc, j, units, dz.data() + r * 4 * units,
                          dc_next.data() + r * units);
          }
          std::copy_n(dz.data() + r * 4 * units, 4 * units, dz_out + at * 4 * units);
        }
        Gemm(dz.data(), 4 * units, n, packed, dh_next.data());
      }
      for (int64_t r = 0; r < n; ++r)
        for (int64_t j = 0; j < units; j += kLanes) {
          const int64_t row = (first + r) * units;
          StorePart(dh_first + row, j, units, LoadPart(dh_next.data() + r * packed.n_pad, j, units));
          StorePart(dc_first + row, j, units, LoadPart(dc_next.data() + r * units, j, units));
        }
    });
  }

 private:
  bool reverse_;
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

REGISTER_OP("LstmSequence")
    .Input("xw: T")
    .Input("h0: T")
    .Input("c0: float")
    .Input("kernel: T")
    .Input("lengths: int32")
    .Output("hs: T")
    .Output("cs: float")
    .Output("h_in: T")
    .Output("saved: float")
    .Attr("T: {float, bfloat16}")
    .Attr("reverse: bool = false")
    .Attr("save: bool = true")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      tensorflow::shape_inference::ShapeHandle xw, state;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 3, &xw));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 2, &state));
      bool save;
      TF_RETURN_IF_ERROR(c->GetAttr("save", &save));
      tensorflow::shape_inference::DimensionHandle six;
      TF_RETURN_IF_ERROR(c->Multiply(c->Dim(state, 1), 6, &six));
      const auto rows = c->Dim(state, 0), time = c->Dim(xw, 1), units = c->Dim(state, 1);
      const auto kept = save ? time : c->MakeDim(0);
      for (int i = 0; i < 2; ++i) c->set_output(i, c->MakeShape({rows, time, units}));
      c->set_output(2, c->MakeShape({rows, kept, units}));
      c->set_output(3, c->MakeShape({rows, kept, six}));
      return absl::OkStatus();
    });

REGISTER_OP("LstmSequenceGrad")
    .Input("dhs: T")
    .Input("dcs: float")
    .Input("saved: float")
    .Input("kernel: T")
    .Input("lengths: int32")
    .Output("dzs: T")
    .Output("dh0: T")
    .Output("dc0: float")
    .Attr("T: {float, bfloat16}")
    .Attr("reverse: bool = false")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      tensorflow::shape_inference::ShapeHandle dhs;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 3, &dhs));
      tensorflow::shape_inference::DimensionHandle four;
      TF_RETURN_IF_ERROR(c->Multiply(c->Dim(dhs, 2), 4, &four));
      c->set_output(0, c->MakeShape({c->Dim(dhs, 0), c->Dim(dhs, 1), four}));
      c->set_output(1, c->MakeShape({c->Dim(dhs, 0), c->Dim(dhs, 2)}));
      c->set_output(2, c->MakeShape({c->Dim(dhs, 0), c->Dim(dhs, 2)}));
      return absl::OkStatus();
    });

REGISTER_CPU_KERNELS("LstmCell", LstmCellOp);
REGISTER_CPU_KERNELS("LstmCellGrad", LstmCellGradOp);
REGISTER_CPU_KERNELS("LstmSequence", LstmSequenceOp);
REGISTER_CPU_KERNELS("LstmSequenceGrad", LstmSequenceGradOp);

// ---- one decoder step, product and cell in one op: LstmStep ----------------------------
//
// The searches' decoder step: z = [x, h] @ W + bias, then the cell. With TensorFlow's ops
// that is a concatenation, a matmul writing z [N, 4 * units], a bias pass and LstmCell
// reading z back. Here W is packed once per search in GateLayout (PackWeights "gates"): a
// panel's result holds the four gates of kLanes units, and the cell runs on it while it is
// in registers. No gradient (searches only; training runs LstmSequence).
//
// x T [N, in], h T [N, units], c float [N, units], packed int32, bias float [4 * units]
// -> h T [N, units], c float [N, units].

namespace {

template <typename T>
class LstmStepOp : public OpKernel {
 public:
  explicit LstmStepOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor &x = ctx->input(0), &h = ctx->input(1), &c = ctx->input(2);
    const Tensor &packed = ctx->input(3), &bias = ctx->input(4);
    OP_REQUIRES(ctx, x.dims() == 2 && h.dims() == 2 && h.dim_size(0) == x.dim_size(0) &&
                         c.shape() == h.shape(),
                tensorflow::errors::InvalidArgument(
                    "x must be [rows, in], h and c [rows, units]; got ", x.shape().DebugString(),
                    ", ", h.shape().DebugString(), ", ", c.shape().DebugString()));
    const int64_t rows = x.dim_size(0), inputs = x.dim_size(1), units = h.dim_size(1);
    const int64_t depth = inputs + units, columns = GateLayout::Columns(units);
    OP_REQUIRES(ctx, bias.shape() == TensorShape({4 * units}),
                tensorflow::errors::InvalidArgument("bias must be [", 4 * units, "], got ",
                                                    bias.shape().DebugString()));
    OP_REQUIRES(ctx, packed.dims() == 1 && packed.NumElements() == PackedB<T>::Words(depth, columns),
                tensorflow::errors::InvalidArgument(
                    "packed weights hold ", packed.NumElements(), " words; [", depth, ", ",
                    4 * units, "] packs into ", PackedB<T>::Words(depth, columns),
                    " (packed by PackWeights for other sizes, dtype or layout?)"));
    Tensor *h_new = nullptr, *c_new = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, h.shape(), &h_new));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, c.shape(), &c_new));
    if (rows == 0 || units == 0) return;
    const PackedB<T> w(depth, columns,
                       reinterpret_cast<const uint32_t*>(packed.flat<int32_t>().data()));
    // the bias in the same column order as the packed gates
    const GateLayout gate{units};
    std::vector<float> gate_bias(columns, 0.0f);
    for (int64_t nn = 0; nn < columns; ++nn)
      if (gate(nn) >= 0) gate_bias[nn] = bias.flat<float>()(gate(nn));
    const T *x_in = x.flat<T>().data(), *h_in = h.flat<T>().data();
    const float* c_in = c.flat<float>().data();
    T* h_out = h_new->flat<T>().data();
    float* c_out = c_new->flat<float>().data();
    ForEachRowBlock(ctx, rows, [&](int64_t first, int64_t last) {
      // the block's rows of [x, h], contiguous: the product's A
      std::vector<T> a((last - first) * depth);
      for (int64_t r = first; r < last; ++r) {
        std::copy_n(x_in + r * inputs, inputs, a.data() + (r - first) * depth);
        std::copy_n(h_in + r * units, units, a.data() + (r - first) * depth + inputs);
      }
      for (int64_t p = 0; p < columns / kPanel; ++p) {
        const float* panel_bias = gate_bias.data() + p * kPanel;
        const int64_t j = p * kLanes;  // the panel's first unit
        PanelRows(a.data(), depth, last - first, w, p, [&](int64_t r0, int r, Quad q) {
          const int64_t row = first + r0 + r;
          fvec pre[4];
          for (int g = 0; g < 4; ++g) pre[g] = q.v[g] + Load(panel_bias + g * kLanes);
          CellBlock(pre, LoadPart(c_in + row * units, j, units), j, units, h_out + row * units,
                    c_out + row * units, nullptr);
        });
      }
    });
  }
};

}  // namespace

REGISTER_OP("LstmStep")
    .Input("x: T")
    .Input("h: T")
    .Input("c: float")
    .Input("packed: int32")
    .Input("bias: float")
    .Output("h_new: T")
    .Output("c_new: float")
    .Attr("T: {float, bfloat16}")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      c->set_output(0, c->input(1));
      c->set_output(1, c->input(2));
      return absl::OkStatus();
    });

REGISTER_CPU_KERNELS("LstmStep", LstmStepOp);
