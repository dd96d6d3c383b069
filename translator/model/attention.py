"""Attention: which source words should the decoder look at for the next target word?

At each target position the decoder's hidden state h_t (the query) is compared with every
source position's encoder state (the keys, made from the memory), and the comparison
scores are turned into a distribution over the source positions:

    score_s = h_t . k_s                          Luong "dot"; "general": k_s = W_k m_s
            = v . tanh(W_k m_s + W_q h_t + b)    Bahdanau "additive"
    a_t     = softmax(score)                     attention weights, sum to 1 over s
    ctx_t   = sum_s a_ts m_s                     the context vector: a weighted average
    ~h_t    = tanh(W_c [ctx_t; h_t] + b_c)       the attentional vector (Seq2Seq.attentional)

Without attention the decoder must squeeze the whole source sentence into its initial
state; with it, every target word reads the source words it needs directly.
"""

from __future__ import annotations

from collections.abc import Callable

from keras import ops

NEG_INF = -1e9  # added to the scores at padded source positions: their weight becomes 0


def attend(query, keys, memory, mask, score: Callable) -> tuple:
    """Scores, softmax and context for every query position at once.

    query [batch, T, q], keys [batch, S, k], memory [batch, S, m], mask bool [batch, S]
    (True at real tokens, or None); score(query, keys) -> [batch, T, S].
    Returns context [batch, T, m] and the attention weights [batch, T, S].
    """
    scores = score(query, keys)
    if mask is not None:
        scores = ops.where(ops.expand_dims(mask, 1), scores, ops.cast(NEG_INF, scores.dtype))
    weights = ops.softmax(scores, axis=-1)
    context = ops.matmul(weights, memory)
    return context, weights


def dot_scores(query, keys):
    """query [batch, T, d], keys [batch, S, d] -> [batch, T, S]: q . k."""
    return ops.matmul(query, ops.transpose(keys, (0, 2, 1)))
