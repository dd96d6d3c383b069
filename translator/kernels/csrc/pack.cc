// PackWeights: a weight matrix packed once (per search) for gemm.h's micro-kernel, for the
// ops that read the same weights at every step: ProjectTopK (top_k.cc) and LstmStep
// (lstm_cell.cc). The words are this machine's layout (panel width, bfloat16 pairs or
// float32), for this process only; the ops check that their sizes match.

#include "gemm.h"

namespace {

// weights -> int32 words [PackedB<T>::Words(depth, columns)], by layout:
//   "dense":      weights [depth, n], B = weights;
//   "transposed": weights [n, depth], B = weights^T (a tied embedding table);
//   "gates":      weights [depth, 4 * units] (an LSTM's stacked kernel), B's columns in
//                 GateLayout's order.
template <typename T>
class PackWeightsOp : public OpKernel {
 public:
  explicit PackWeightsOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("layout", &layout_));
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& weights = ctx->input(0);
    OP_REQUIRES(ctx, weights.dims() == 2,
                tensorflow::errors::InvalidArgument("weights must be a matrix, got ",
                                                    weights.shape().DebugString()));
    const bool transposed = layout_ == "transposed";
    const int64_t depth = weights.dim_size(transposed ? 1 : 0);
    const int64_t n = weights.dim_size(transposed ? 0 : 1);
    const T* src = weights.flat<T>().data();
    Tensor* packed = nullptr;
    if (layout_ == "gates") {
      OP_REQUIRES(ctx, n % 4 == 0,
                  tensorflow::errors::InvalidArgument("gate weights must be [depth, 4 * units], got ",
                                                      weights.shape().DebugString()));
      const int64_t columns = GateLayout::Columns(n / 4);
      OP_REQUIRES_OK(ctx, ctx->allocate_output(
                              0, TensorShape({PackedB<T>::Words(depth, columns)}), &packed));
      PackedB<T>::Pack(src, depth, columns, n, false, GateLayout{n / 4}, Words(packed));
      return;
    }
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({PackedB<T>::Words(depth, n)}),
                                             &packed));
    PackedB<T>::Pack(src, depth, n, transposed, Words(packed));
  }

 private:
  static uint32_t* Words(Tensor* t) { return reinterpret_cast<uint32_t*>(t->flat<int32_t>().data()); }
  std::string layout_;
};

}  // namespace

REGISTER_OP("PackWeights")
    .Input("weights: T")
    .Output("packed: int32")
    .Attr("T: {float, bfloat16}")
    .Attr("layout: {'dense', 'transposed', 'gates'}")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      c->set_output(0, c->Vector(c->UnknownDim()));
      return absl::OkStatus();
    });

REGISTER_CPU_KERNELS("PackWeights", PackWeightsOp);
