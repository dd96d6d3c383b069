"""The seam between the model and the compiled kernels.

A model is made of a few whole operations: run an LSTM over a sequence, take one LSTM
step, attend, drop out, project to the vocabulary, compute the loss. `Operations` below
runs each in plain TensorFlow, by calling the textbook code in lstm.py, attention.py and
loss.py: this is the reference, and what runs wherever the kernels cannot (no compiler,
TRANSLATOR_NATIVE=0, a GPU, a SavedModel).

translator.kernels.choose_operations() returns a subclass that replaces some of these methods
with compiled ops, each held to the method it replaces by an equivalence test
(tests/test_kernels.py). A model gets one Operations object when it is built or loaded
(Seq2Seq.use_operations; translator.model_folder chooses it) and its layers call only it.
"""

from __future__ import annotations

from typing import NamedTuple

import keras
import tensorflow as tf
from keras import ops

from translator.model import attention, lstm
from translator.model.loss import smoothed_cross_entropy


class OutputWeights(NamedTuple):
    """The output projection: logits = x @ matrix + bias, or x @ matrix^T + bias when
    transposed (a tied embedding table [vocab, dim])."""

    matrix: tf.Tensor
    bias: tf.Tensor  # float32 [vocab]
    transposed: bool


class Operations:
    """The plain path: every operation in TensorFlow, as the textbook writes it."""

    name = "plain"

    def lstm_sequence(self, xw, h0, c0, recurrent_kernel, lengths, reverse=False,
                      training=None):
        """Every step's (h, c) [batch, time, units]; see lstm.lstm_sequence."""
        return lstm.lstm_sequence(xw, h0, c0, recurrent_kernel, lengths, reverse)

    def lstm_step_weights(self, kernel, recurrent_kernel, bias, for_search=False) -> tuple:
        """What lstm_step reads, prepared once (per search or training step), not per step:
        (W_x stacked over W_h [in + units, 4 * units], bias [4 * units]), in the kernels'
        dtype (the bias may come as the float32 variable)."""
        return ops.concatenate([kernel, recurrent_kernel], 0), ops.cast(bias, kernel.dtype)

    def lstm_step(self, x, h, c, weights: tuple, training=None):
        """One step: x [batch, in], (h, c) [batch, units] -> (h_t, c_t); see lstm.lstm_step."""
        return lstm.lstm_step(x, h, c, weights[0], weights[1])

    def attention(self, query, keys, memory, mask, rows, layer, training=None):
        """Context [Q, T, m] and weights [Q, T, S] for query [Q, T, q] (see attention.attend).

        keys, memory and mask may hold one row per group of Q / groups consecutive query
        rows (a beam's hypotheses of one sentence read their sentence's row), or with rows
        int32 [groups] the row each group reads (a search's sentences still searched).
        """
        if rows is not None:
            keys, memory = tf.gather(keys, rows), tf.gather(memory, rows)
            mask = None if mask is None else tf.gather(mask, rows)
        queries, length = ops.shape(query)[0], ops.shape(query)[1]
        grouped = ops.reshape(query, (ops.shape(keys)[0], -1, query.shape[-1]))
        context, weights = attention.attend(grouped, keys, memory, mask, layer.scores)
        return (ops.reshape(context, (queries, length, memory.shape[-1])),
                ops.reshape(weights, (queries, length, ops.shape(keys)[1])))

    def dropout(self, x, rate: float, seed_generator):
        """x with each element zeroed with probability rate, the rest scaled by 1/(1-rate)."""
        return keras.random.dropout(x, rate, seed=seed_generator)

    def output_weights(self, matrix, bias, transposed: bool, for_search=False):
        """What output reads, prepared once per search: an OutputWeights."""
        return OutputWeights(matrix, ops.cast(bias, "float32"), transposed)

    def output(self, x, weights, dtype):
        """x [..., dim] -> logits [..., vocab] in dtype; the bias added in float32."""
        logits = tf.matmul(tf.reshape(x, [-1, x.shape[-1]]), weights.matrix,
                           transpose_b=weights.transposed)
        logits = ops.cast(ops.cast(logits, "float32") + weights.bias, dtype)
        logits = tf.reshape(logits, tf.concat([tf.shape(x)[:-1], [-1]], 0))
        vocab = weights.matrix.shape[0 if weights.transposed else 1]
        logits.set_shape(x.shape[:-1].concatenate([vocab]))
        return logits

    def search_output(self, x, weights):
        """What a search reads from a decoder step: the logits [N, vocab], float32 (the
        search computes its log-probs in float32; the bias is not rounded to x's dtype)."""
        return self.output(x, weights, "float32")

    def cross_entropy(self, labels, logits, smoothing: float):
        """Per-token loss float32 [...]; see loss.smoothed_cross_entropy."""
        return smoothed_cross_entropy(labels, logits, smoothing)


PLAIN = Operations()
