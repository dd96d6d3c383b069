"""The compiled kernels as a model's operations: translator.model.operations.Operations
with whole operations replaced by the ops of translator.kernels.library.

Each method returns what the plain method it replaces returns (tests/test_kernels.py
holds every one to it, values and gradients) and falls back to the plain method where its
op does not apply (another dtype, a gradient the op does not give, additive attention).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import tensorflow as tf
from keras import ops

from translator.kernels import library
from translator.model.operations import Operations, OutputWeights
from translator.search import top_k


class PackedOutput(NamedTuple):
    """The output projection packed for ProjectTopK (once per search)."""

    packed: tf.Tensor  # int32 words: the weights in the kernel's layout
    bias: tf.Tensor  # float32 [vocab]


class LstmStepWeights(NamedTuple):
    stacked: tf.Tensor  # W_x over W_h [in + units, 4 * units], the compute dtype
    bias: tf.Tensor  # [4 * units], the compute dtype
    packed: tf.Tensor | None  # stacked packed for LstmStep, where the searches run it
    bias32: tf.Tensor  # float32 [4 * units]


class CompiledOutputWeights(NamedTuple):
    plain: OutputWeights
    table: tf.Tensor | None  # tied: [vocab, dim + 2], the table then the bias columns
    packed: PackedOutput | None  # where the searches run the fused step


class SearchProjection(NamedTuple):
    """What a search reads from a decoder step with the fused step: the logits
    features @ W + bias, not computed; ProjectTopK computes them a block at a time and
    keeps only each row's top k and log-normaliser."""

    features: tf.Tensor  # [N, depth], float32 or bfloat16 (W's dtype)
    weights: PackedOutput

    @property
    def shape(self) -> tf.TensorShape:
        """The logits' shape, [N, vocab]."""
        return tf.TensorShape([self.features.shape[0], self.weights.bias.shape[0]])

    def top_k_log_norm(self, k) -> tuple:
        """values float32 [N, k], token ids int32 [N, k], log-normaliser float32 [N]."""
        return library.project_top_k(self.features, *self.weights, int(tf.get_static_value(k)))


class SearchLogits(NamedTuple):
    """A decoder step's logits [N, vocab], whose top k and log-normaliser TopKLogNorm finds
    in one read (the search's own top-k where k is not known when the graph is built)."""

    logits: tf.Tensor

    @property
    def shape(self) -> tf.TensorShape:
        return self.logits.shape

    def top_k_log_norm(self, k) -> tuple:
        static_k = tf.get_static_value(k)
        fast = None if static_k is None else library.top_k_log_norm(self.logits, int(static_k))
        return top_k.top_k_log_norm(self.logits, k) if fast is None else fast


class CompiledOperations(Operations):
    """Operations on the compiled kernels (translator/kernels/csrc)."""

    name = "compiled"

    def lstm_sequence(self, xw, h0, c0, recurrent_kernel, lengths, reverse=False,
                      training=None):
        fast = library.lstm_sequence(xw, h0, c0, recurrent_kernel, lengths, reverse,
                                     save=training is not False)
        if fast is None:
            return super().lstm_sequence(xw, h0, c0, recurrent_kernel, lengths, reverse)
        return fast

    def lstm_step_weights(self, kernel, recurrent_kernel, bias, for_search=False):
        """For a search, where it runs the fused step, also packed for LstmStep."""
        stacked, cast_bias = super().lstm_step_weights(kernel, recurrent_kernel, bias)
        packed = library.pack_for_search(stacked, "gates") if for_search else None
        return LstmStepWeights(stacked, cast_bias, packed, ops.cast(bias, "float32"))

    def lstm_step(self, x, h, c, weights, training=None):
        """The fused LstmStep (product and cell in one op; no gradient) where the weights
        are packed for a search; else the product, then the cell as one LstmCell op."""
        if weights.packed is not None and not training:
            return library.lstm_step(x, h, c, weights.packed, weights.bias32)
        z = ops.matmul(ops.concatenate([x, h], -1), weights.stacked) + weights.bias
        fast = library.lstm_cell([z], c, save=bool(training))
        if fast is None:
            return super().lstm_step(x, h, c, weights, training)
        return fast[:2]

    def attention(self, query, keys, memory, mask, rows, layer, training=None):
        """GroupedAttention outside training (dot-product scores, a mask): each sentence's
        keys and memory read once for all its queries."""
        if not training and layer.dot_product and mask is not None:
            queries, length = ops.shape(query)[0], ops.shape(query)[1]
            fast = library.grouped_attention(ops.reshape(query, (-1, query.shape[-1])), keys,
                                             memory, mask, rows)
            if fast is not None:
                return (ops.reshape(fast[0], (queries, length, memory.shape[-1])),
                        ops.reshape(fast[1], (queries, length, ops.shape(keys)[1])))
        return super().attention(query, keys, memory, mask, rows, layer, training)

    def dropout(self, x, rate: float, seed_generator):
        """SeededDropout: the mask hashed from each element's position and a seed."""
        fast = library.dropout(x, rate, seed_generator.next())
        return super().dropout(x, rate, seed_generator) if fast is None else fast

    def output_weights(self, matrix, bias, transposed: bool, for_search=False):
        """Also, for a tied table, the table with the bias columns (see output); for a
        search, where it runs the fused step, the weights packed for ProjectTopK."""
        plain = super().output_weights(matrix, bias, transposed)
        packed = None
        if for_search:
            packed = library.pack_for_search(matrix, "transposed" if transposed else "dense")
        if packed is not None:  # the search reads only the packed weights
            return CompiledOutputWeights(plain, None, PackedOutput(packed, plain.bias))
        return CompiledOutputWeights(plain, _with_bias_columns(plain) if transposed else None,
                                     None)

    def output(self, x, weights, dtype):
        """For a tied table, the bias added inside the matmul (two columns of ones against
        the bias split into a high and a low part, which in bfloat16 keep the float32 bias
        to about 16 bits): no separate pass over the vocabulary-wide logits."""
        if weights.table is None:
            return super().output(x, weights.plain, dtype)
        flat = tf.reshape(x, [-1, x.shape[-1]])
        flat = tf.concat([flat, tf.ones([tf.shape(flat)[0], 2], flat.dtype)], 1)
        logits = tf.matmul(flat, weights.table, transpose_b=True)
        logits = tf.reshape(logits, tf.concat([tf.shape(x)[:-1], [-1]], 0))
        logits.set_shape(x.shape[:-1].concatenate(weights.table.shape[:1]))
        return ops.cast(logits, dtype)

    def search_output(self, x, weights):
        """ProjectTopK's projection where the weights are packed (the fused step), else
        the logits for TopKLogNorm."""
        if weights.packed is not None:
            return SearchProjection(x, weights.packed)
        return SearchLogits(self.output(x, weights, x.dtype))

    def cross_entropy(self, labels, logits, smoothing: float):
        """SmoothedCrossEntropy: one read of the logits each way."""
        vocab = tf.shape(logits)[-1]
        fast = library.smoothed_cross_entropy(tf.reshape(logits, [-1, vocab]),
                                              tf.reshape(tf.cast(labels, tf.int32), [-1]),
                                              float(smoothing))
        if fast is None:
            return super().cross_entropy(labels, logits, smoothing)
        return tf.reshape(fast, tf.shape(labels))


def _with_bias_columns(weights: OutputWeights) -> Any:
    """[vocab, dim + 2]: the table, then the bias in two columns, high and low part."""
    dtype = weights.matrix.dtype
    high = ops.cast(weights.bias, dtype)
    low = ops.cast(weights.bias - ops.cast(high, "float32"), dtype)
    return ops.concatenate([weights.matrix, high[:, None], low[:, None]], 1)
