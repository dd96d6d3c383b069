"""The k best tokens and the log-normaliser of each row of a search step's logits.

The searches need nothing else from the vocabulary-wide logits: a token's log-prob is its
logit minus the row's log-normaliser, and the best tokens by logit are the best by
log-prob. The compiled kernel (translator.native) does it in one pass; where it is not
available, TensorFlow's ops below do the same in a few.

A step function may also hand the search a `Projection`: the logits not yet computed
(features and the packed output weights). Then one kernel computes them a block at a time
and keeps only the top k and the log-normaliser: the vocabulary-wide logits are never
written to memory.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from translator import native

_NEG_INF = float("-inf")
_CHUNK = 32  # values per chunk in row_top_k (about: see _chunk_size)


class Projection(NamedTuple):
    """Logits features @ W + bias, not computed yet: W [depth, vocab] packed by
    translator.native.pack_for_search (once per search). Made only where the searches run
    the fused step (translator.native.fused_step; see Seq2Seq.decode_step)."""

    features: tf.Tensor  # [N, depth], float32 or bfloat16 (W's dtype)
    packed: tf.Tensor  # int32 words
    bias: tf.Tensor  # float32 [vocab]

    @property
    def shape(self) -> tf.TensorShape:
        """The logits' shape, [N, vocab]."""
        return tf.TensorShape([self.features.shape[0], self.bias.shape[0]])


def top_k_log_norm(logits: tf.Tensor | Projection, k: int | tf.Tensor
                   ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """logits [N, vocab] -> the k largest as float32 [N, k] and their token ids int32 [N, k],
    largest first, and log(sum(exp(logits))) per row, float32 [N].

    One pass of the compiled kernel (translator.native) when it is available, else
    TensorFlow ops: the same values and tokens, except in the order of exactly tied logits
    (the kernel puts the lower token id first), and log-normalisers within ~1e-6. For a
    Projection, one kernel from the features (float32 logits, the bias added in float32).
    """
    if isinstance(logits, Projection):
        return native.project_top_k(*logits, int(tf.get_static_value(k)))
    if logits.dtype not in (tf.float32, tf.bfloat16):
        logits = tf.cast(logits, tf.float32)
    static_k = tf.get_static_value(k)
    fast = None if static_k is None else native.top_k_log_norm(logits, int(static_k))
    if fast is not None:
        return fast
    logits = tf.cast(logits, tf.float32)
    top, index = row_top_k(logits, k)
    return top, index, _log_norm(logits, top[:, 0], index[:, 0])


def _log_norm(logits: tf.Tensor, top_logit: tf.Tensor, top_index: tf.Tensor) -> tf.Tensor:
    """log(sum(exp(logits))) per row [N], given each row's largest logit and its index [N].

    Read off the softmax at the top token, log Z = top logit - log p(top): one fused
    softmax kernel instead of separate subtract, exp and sum passes over the vocabulary
    (p(top) >= 1 / vocab, so its logarithm loses nothing).
    """
    top_prob = tf.gather(tf.nn.softmax(logits), top_index, batch_dims=1)
    return top_logit - tf.math.log(top_prob)


def _chunk_size(n: int | None) -> int:
    """Chunk length for row_top_k: a divisor of n near _CHUNK (no padding copy), else _CHUNK."""
    if n is not None:
        for size in sorted(range(_CHUNK - 16, _CHUNK + 17), key=lambda c: (abs(c - _CHUNK), c)):
            if n % size == 0:
                return size
    return _CHUNK


def row_top_k(values: tf.Tensor, k: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Exact top-k of each row of values [N, n] (k <= n): values and indices [N, k].

    TensorFlow's CPU top-k reads a vocabulary-wide row slowly (6 ms for 320 rows of
    8,000). Here it runs on short rows: the maxima of chunks of about _CHUNK values, then
    only the k chunks with the largest maxima, which hold every top-k value (a value
    outside them would be beaten by k chunk maxima). Chunks of ~32 beat longer ones
    (beam 5, batch 256: 1.06x the speed of 48; 128 was slower still): the second top-k
    over k long chunks costs more than the first over more maxima.
    """
    size = _chunk_size(values.shape[1])
    rows, n = tf.shape(values)[0], tf.shape(values)[1]
    chunks = (n + size - 1) // size
    if values.shape[1] is None or values.shape[1] % size:
        values = tf.pad(values, [[0, 0], [0, chunks * size - n]], constant_values=_NEG_INF)
    blocks = tf.reshape(values, [rows, chunks, size])
    _, best = tf.math.top_k(tf.reduce_max(blocks, axis=-1), k=tf.minimum(k, chunks))
    picked = tf.reshape(tf.gather(blocks, best, batch_dims=1), [rows, -1])
    top, index = tf.math.top_k(picked, k=k)
    ids = tf.gather(best, index // size, batch_dims=1) * size + index % size
    return top, tf.minimum(ids, n - 1)  # a padding slot only wins among -inf ties
