// GroupedAttention: dot-product attention of groups of queries over their sentence's memory,
// for the decoder's steps outside training (in place of translator/model/attention.py, attend).
//
// query [R, D], keys [B, S, D], memory [B, S, M] (float32 or bfloat16), mask bool [B, S],
// rows int32 [A], with R = A * g: query rows a * g .. a * g + g - 1 (a sentence's beam
// hypotheses, or its target positions) read stored sentence rows[a] (a search keeps every
// sentence's memory and passes the rows of those still searched: no copy when one ends) ->
//   weights [R, S] = softmax over s of (query . keys[s], or -1e9 where mask is false),
//   context [R, M] = sum over s of weights[s] * memory[s].
//
// With TensorFlow's ops this is two batched matmuls of tiny matrices (a beam's 5 rows
// against 16 source positions) with a masked softmax between them, launched per sentence
// and far from the matmul peak: 1.6 ms per beam step of 256 sentences, several percent of
// a step. Here a sentence's keys and memory (16 KB each in bfloat16 at 16 x 512) are read
// once, from cache for every hypothesis, in float32 arithmetic throughout.

#include "simd.h"

namespace {

constexpr float kMasked = -1e9f;  // as translator.model.attention.NEG_INF

constexpr int64_t kChunk = 8;  // queries scored together: each key and memory load serves all

// One sentence for N of its queries (N a compile-time constant, so that the N running sums
// stay in registers): q [N, depth] against keys [length, depth] and memory [length, width]
// -> weights [N, length] (softmax over the valid positions) and context [N, width].
template <int N, typename T>
void Attend(const T* q, const T* keys, const T* memory, const bool* valid, int64_t length,
            int64_t depth, int64_t width, float (*w)[kChunk], T* weights, T* context) {
  for (int64_t s = 0; s < length; ++s) {
    fvec acc[N] = {};
    const T* key = keys + s * depth;
    for (int64_t j = 0; j < depth; j += kLanes) {
      const fvec kv = LoadPart(key, j, depth);
      for (int i = 0; i < N; ++i) acc[i] += LoadPart(q + i * depth, j, depth) * kv;
    }
    for (int i = 0; i < N; ++i) {
      float total = 0.0f;
      for (int l = 0; l < kLanes; ++l) total += acc[i][l];
      w[s][i] = valid[s] ? total : kMasked;
    }
  }
  for (int i = 0; i < N; ++i) {
    float top = -std::numeric_limits<float>::infinity(), total = 0.0f;
    for (int64_t s = 0; s < length; ++s) top = std::max(top, w[s][i]);
    for (int64_t s = 0; s < length; ++s) total += (w[s][i] = std::exp(w[s][i] - top));
    for (int64_t s = 0; s < length; ++s) {
      w[s][i] /= total;
      weights[i * length + s] = static_cast<T>(w[s][i]);
    }
  }
  for (int64_t j = 0; j < width; j += kLanes) {
    fvec acc[N] = {};
    for (int64_t s = 0; s < length; ++s) {
      const fvec mv = LoadPart(memory + s * width, j, width);
      for (int i = 0; i < N; ++i) acc[i] += w[s][i] * mv;
    }
    for (int i = 0; i < N; ++i) StorePart(context + i * width, j, width, acc[i]);
  }
}

// Attend<count> for a count from 1 to kChunk.
template <typename T, int N = kChunk>
void AttendSome(int64_t count, const T* q, const T* keys, const T* memory, const bool* valid,
                int64_t length, int64_t depth, int64_t width, float (*w)[kChunk], T* weights,
                T* context) {
  if constexpr (N > 1) {
    if (count < N)
      return AttendSome<T, N - 1>(count, q, keys, memory, valid, length, depth, width, w,
                                  weights, context);
  }
  Attend<N>(q, keys, memory, valid, length, depth, width, w, weights, context);
}

template <typename T>
class GroupedAttentionOp : public OpKernel {
 public:
  explicit GroupedAttentionOp(OpKernelConstruction* ctx) : OpKernel(ctx) {}

  void Compute(OpKernelContext* ctx) override {
    const Tensor& query = ctx->input(0);
    const Tensor& keys = ctx->input(1);
    const Tensor& memory = ctx->input(2);
    const Tensor& mask = ctx->input(3);
    const Tensor& sentence_rows = ctx->input(4);
    OP_REQUIRES(ctx, query.dims() == 2 && keys.dims() == 3 && memory.dims() == 3 &&
                         mask.dims() == 2 && sentence_rows.dims() == 1,
                tensorflow::errors::InvalidArgument("query [R, D], keys [B, S, D], memory "
                                                    "[B, S, M], mask [B, S] and rows [A] "
                                                    "expected"));
    const int64_t rows = query.dim_size(0), depth = query.dim_size(1);
    const int64_t stored = keys.dim_size(0), length = keys.dim_size(1);
    const int64_t sentences = sentence_rows.dim_size(0), width = memory.dim_size(2);
    OP_REQUIRES(ctx, keys.dim_size(2) == depth && memory.dim_size(0) == stored &&
                         memory.dim_size(1) == length && mask.dim_size(0) == stored &&
                         mask.dim_size(1) == length,
                tensorflow::errors::InvalidArgument(
                    "shapes do not match: query ", query.shape().DebugString(), ", keys ",
                    keys.shape().DebugString(), ", memory ", memory.shape().DebugString(),
                    ", mask ", mask.shape().DebugString()));
    OP_REQUIRES(ctx, sentences > 0 ? rows % sentences == 0 : rows == 0,
                tensorflow::errors::InvalidArgument("query rows (", rows,
                                                    ") must be a multiple of the sentences (",
                                                    sentences, ")"));
    const int32_t* row_of = sentence_rows.flat<int32_t>().data();
    for (int64_t a = 0; a < sentences; ++a)
      OP_REQUIRES(ctx, row_of[a] >= 0 && row_of[a] < stored,
                  tensorflow::errors::InvalidArgument("rows[", a, "] = ", row_of[a],
                                                      " is outside [0, ", stored, ")"));
    Tensor *context = nullptr, *weights = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({rows, width}), &context));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({rows, length}), &weights));
    if (rows == 0) return;
    const int64_t group = rows / sentences;
    const T* q = query.flat<T>().data();
    const T* k = keys.flat<T>().data();
    const T* m = memory.flat<T>().data();
    const bool* valid = mask.flat<bool>().data();
    T* out_context = context->flat<T>().data();
    T* out_weights = weights->flat<T>().data();
    auto work = [&](int64_t first, int64_t last) {
      std::vector<float> scratch(length * kChunk);
      auto* w = reinterpret_cast<float(*)[kChunk]>(scratch.data());  // [length][kChunk]
      for (int64_t a = first; a < last; ++a) {
        const int64_t b = row_of[a];  // the stored row sentence a reads
        for (int64_t r = a * group; r < (a + 1) * group; r += kChunk)
          AttendSome(std::min(kChunk, (a + 1) * group - r), q + r * depth,
                     k + b * length * depth, m + b * length * width, valid + b * length,
                     length, depth, width, w, out_weights + r * length,
                     out_context + r * width);
      }
    };
    auto* workers = ctx->device()->tensorflow_cpu_worker_threads();
    tensorflow::Shard(workers->num_threads, workers->workers, sentences,
                      /*cost_per_unit=*/group * length * (depth + width), work);
  }
};

}  // namespace

REGISTER_OP("GroupedAttention")
    .Input("query: T")
    .Input("keys: T")
    .Input("memory: T")
    .Input("mask: bool")
    .Input("rows: int32")
    .Output("context: T")
    .Output("weights: T")
    .Attr("T: {float, bfloat16}")
    .SetShapeFn([](tensorflow::shape_inference::InferenceContext* c) {
      tensorflow::shape_inference::ShapeHandle query, keys, memory;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(0), 2, &query));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 3, &keys));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 3, &memory));
      c->set_output(0, c->Matrix(c->Dim(query, 0), c->Dim(memory, 2)));
      c->set_output(1, c->Matrix(c->Dim(query, 0), c->Dim(keys, 1)));
      return absl::OkStatus();
    });

REGISTER_CPU_KERNELS("GroupedAttention", GroupedAttentionOp);
