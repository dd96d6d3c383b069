"""Greedy search: at each step every sentence takes its most likely next token."""

from __future__ import annotations

import tensorflow as tf

from translator.search import loop
from translator.search.loop import BOS_ID, EOS_ID, PAD_ID, SearchResult, StepFn
from translator.search.top_k import top_k_log_norm


class Greedy:
    """The greedy strategy for loop.run: one hypothesis (row) per sentence.

    A sentence ends when its best token is EOS or it has max_length tokens. Its score is
    the sum of the log-probs of its tokens, EOS included when produced.
    """

    width, reorders = 1, False

    def __init__(self, bos_id: int = BOS_ID, eos_id: int = EOS_ID) -> None:
        self.bos_id, self.eos_id = bos_id, eos_id

    def start(self, batch: tf.Tensor, return_attention: bool) -> tuple:
        """No per-sentence values; kept: lengths, scores [batch], the tokens and the
        attention written at each step (for every sentence: zero for the done)."""
        self.batch, self.return_attention = batch, return_attention
        kept = (tf.zeros([batch], tf.int32), tf.zeros([batch]),
                loop.history_array(tf.int32), loop.history_array(tf.float32))
        return (), kept

    def advance(self, t, active, limits, logits, attention, own, kept) -> loop.Choice:
        lengths, scores, out, att = kept
        best_logit, best, log_norm = top_k_log_norm(logits, 1)
        best_logit, best = best_logit[:, 0], best[:, 0]
        emit = best != self.eos_id
        at = active[:, None]
        length = tf.gather(lengths, active) + tf.cast(emit, tf.int32)
        lengths = tf.tensor_scatter_nd_update(lengths, at, length)
        scores = tf.tensor_scatter_nd_add(scores, at, best_logit - log_norm)
        token = tf.where(emit, best, PAD_ID)
        out = out.write(t, tf.tensor_scatter_nd_update(tf.fill([self.batch], PAD_ID), at, token))
        if self.return_attention:
            rows = tf.where(emit[:, None], attention, 0.0)
            att = att.write(t, tf.scatter_nd(at, rows, [self.batch, tf.shape(rows)[1]]))
        going = tf.reshape(tf.where(emit & (length < limits)), [-1])
        return loop.Choice(going, going, tf.gather(token, going), own,
                           (lengths, scores, out, att))

    def result(self, kept) -> SearchResult:
        lengths, scores, out, att = kept
        keep = tf.reduce_max(lengths)
        return SearchResult(
            tokens=loop.time_to_batch(out.stack(), keep)[:, None],
            lengths=lengths[:, None],
            scores=scores[:, None],
            attention=(loop.time_to_batch(att.stack(), keep)[:, None]
                       if self.return_attention else None),
        )


def greedy_search(step_fn: StepFn, initial_state, max_lengths: tf.Tensor, *,
                  bos_id: int = BOS_ID, eos_id: int = EOS_ID, return_attention: bool = False,
                  sentence_state=None, sentence_rows: bool = False) -> SearchResult:
    """Takes the most likely token each step; returns a SearchResult with nbest = 1.

    initial_state and sentence_state leaves are [batch, ...]; max_lengths int32 [batch].
    See translator.search.loop for step_fn, sentence_state and sentence_rows.
    """
    return loop.run(Greedy(bos_id, eos_id), step_fn, initial_state, max_lengths,
                    return_attention, sentence_state, sentence_rows)
