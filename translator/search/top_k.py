"""The k best tokens and the log-normaliser of each row of a search step's logits.

A search needs nothing else from the vocabulary-wide logits: a token's log-probability
is its logit minus the row's log-normaliser log(sum(exp(logits))), and the best tokens
by logit are the best by log-probability, so no full log-softmax is ever written out.
"""

from __future__ import annotations

import tensorflow as tf

_NEG_INF = float("-inf")
_CHUNK = 32  # values per chunk in row_top_k (about: see _chunk_size)


def top_k_log_norm(logits, k: int | tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """logits [N, vocab] -> the k largest as float32 [N, k] and their token ids int32
    [N, k], largest first, and the log-normaliser per row, float32 [N].

    A step function may return, instead of a tensor, an object with its own
    `top_k_log_norm(k)` giving the same three (translator.kernels computes them in one
    pass, or from the decoder's features without writing the logits out).
    """
    if hasattr(logits, "top_k_log_norm"):
        return logits.top_k_log_norm(k)
    logits = tf.cast(logits, tf.float32)
    top, index = row_top_k(logits, k)
    return top, index, _log_norm(logits, top[:, 0], index[:, 0])


def _log_norm(logits: tf.Tensor, top_logit: tf.Tensor, top_index: tf.Tensor) -> tf.Tensor:
    """log(sum(exp(logits))) per row [N], given each row's largest logit and its index [N].

    Read off the softmax at the top token, log Z = top logit - log p(top): one fused
    softmax op instead of separate subtract, exp and sum passes over the vocabulary
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

    TensorFlow's CPU top-k reads a vocabulary-wide row slowly; here it runs on short
    rows: the maxima of chunks of about _CHUNK values, then only the k chunks with the
    largest maxima, which hold every top-k value (a value outside them would be beaten by
    k chunk maxima).
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
