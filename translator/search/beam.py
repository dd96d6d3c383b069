"""Beam search: keep the beam_size best partial translations of each sentence.

At each step every alive hypothesis is extended by its best tokens; of all extensions
the best beam_size that do not end stay alive, and those that end (EOS, or the length
limit) compete for the n-best. A finished hypothesis's score is its log-prob divided by
the GNMT length penalty ((5 + length) / 6) ** alpha, length = decoding steps taken
(tokens, plus one when it ended with EOS); without it short translations would win.

The search stores back-pointers (parent row and token per step) rather than copying each
hypothesis every step, and rebuilds the n-best once at the end. Only the state leaves are
reordered each step.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from translator.search import loop
from translator.search.loop import BOS_ID, EOS_ID, PAD_ID, SearchResult, StepFn
from translator.search.top_k import top_k_log_norm

_NEG_INF = float("-inf")


class Finished(NamedTuple):
    """Best finished hypotheses per sentence, each field [batch, nbest], best first."""

    scores: tf.Tensor  # float32, -inf where the slot is empty
    steps: tf.Tensor  # int32, step that chose the last token, -1 where empty
    rows: tf.Tensor  # int32, row in [0, batch * beam) that chose it at that step
    last: tf.Tensor  # int32, the last token chosen: EOS, or a real token at a forced end


def length_penalty(length: tf.Tensor | int, alpha: float) -> tf.Tensor:
    """GNMT penalty ((5 + length) / 6) ** alpha, float32, same shape as ``length``."""
    length = tf.cast(length, tf.float32)
    if alpha == 0:
        return tf.ones_like(length)
    return tf.pow((5.0 + length) / 6.0, alpha)


class Beam:
    """The beam strategy for loop.run: beam_size rows per sentence; the nbest best
    finished hypotheses kept. Only the best beam_size candidates of a step may finish
    (as in fairseq), so a beam of 1 is greedy search."""

    reorders = True

    def __init__(self, beam_size: int = 5, alpha: float = 0.6, nbest: int = 1,
                 bos_id: int = BOS_ID, eos_id: int = EOS_ID) -> None:
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}")
        if not 1 <= nbest <= beam_size:
            raise ValueError(f"nbest must be between 1 and beam_size ({beam_size}), got {nbest}")
        self.width, self.alpha, self.nbest = beam_size, alpha, nbest
        self.bos_id, self.eos_id = bos_id, eos_id

    def start(self, batch: tf.Tensor, return_attention: bool) -> tuple:
        """own: each sentence's alive log-probs [batch, beam] (one live hypothesis at first);
        kept: the Finished n-best, then the tokens, parent rows and attention per step."""
        self.history_rows, self.return_attention = batch * self.width, return_attention
        alive = tf.concat([tf.zeros([batch, 1]), tf.fill([batch, self.width - 1], _NEG_INF)], 1)
        finished = Finished(*(tf.fill([batch, self.nbest], x) for x in (_NEG_INF, -1, 0, PAD_ID)))
        kept = (finished, loop.history_array(tf.int32), loop.history_array(tf.int32),
                loop.history_array(tf.float32))
        return alive, kept

    def advance(self, t, active, limits, logits, attention, alive, kept) -> loop.Choice:
        finished, out, parents, att = kept
        cand = self._candidates(alive, logits)
        ends = (cand[2] == self.eos_id) | (t + 1 >= limits)[:, None]
        eligible = ends & (tf.range(tf.shape(ends)[1]) < self.width)
        mine = Finished(*(tf.gather(x, active) for x in finished))
        mine = _add_finished(mine, cand, eligible, t, length_penalty(t + 1, self.alpha))
        finished = Finished(*(tf.tensor_scatter_nd_update(x, active[:, None], new)
                              for x, new in zip(finished, mine)))
        alive, rows, tokens = self._next_alive(cand, ends)
        done = self._done(alive, mine.scores[:, -1], t, limits)
        going = tf.reshape(tf.where(tf.logical_not(done)), [-1])
        rows, tokens = (tf.reshape(tf.gather(tf.reshape(x, [-1, self.width]), going), [-1])
                        for x in (rows, tokens))
        if self.return_attention:
            att = att.write(t, _widen(attention, self.history_rows))
        out = out.write(t, _widen(tokens, self.history_rows, PAD_ID))
        parents = parents.write(t, _widen(rows, self.history_rows))
        return loop.Choice(going, rows, tokens, tf.gather(alive, going),
                           (finished, out, parents, att))

    def _candidates(self, alive, logits) -> tuple:
        """The best extensions of the beams by total log-prob: log-probs, parent rows
        (in [0, A * beam)) and tokens, each [A, C], best first, C = min(2 * beam,
        beam * vocab): enough that beam of them are not EOS. A row's own best C tokens
        hold every candidate it can contribute, so beam * C totals are ranked, not
        beam * vocab."""
        beam, sentences, vocab = self.width, tf.shape(alive)[0], logits.shape[1]
        if vocab is not None:
            count = min(2 * beam, beam * vocab)
            per_row = min(count, vocab)
        else:  # the vocabulary is only known when the step runs
            vocab = tf.shape(logits)[1]
            count = tf.minimum(2 * beam, beam * vocab)
            per_row = tf.minimum(count, vocab)
        row_logits, row_tokens, log_norm = top_k_log_norm(logits, per_row)
        row_log_probs = row_logits - log_norm[:, None]
        total = alive[:, :, None] + tf.reshape(row_log_probs, [sentences, beam, per_row])
        log_probs, index = tf.math.top_k(tf.reshape(total, [sentences, -1]), k=count)
        rows = index // per_row + beam * tf.range(sentences)[:, None]
        tokens = tf.gather(tf.reshape(row_tokens, [sentences, -1]), index, batch_dims=1)
        return log_probs, rows, tokens

    def _next_alive(self, cand: tuple, ends: tf.Tensor) -> tuple:
        """Best beam_size unfinished candidates: log-probs [A, beam], rows and tokens [N]."""
        log_probs, rows, tokens = cand
        alive, index = tf.math.top_k(tf.where(ends, _NEG_INF, log_probs), k=self.width)
        rows = tf.reshape(tf.gather(rows, index, batch_dims=1), [-1])
        tokens = tf.reshape(tf.gather(tokens, index, batch_dims=1), [-1])
        return alive, rows, tokens

    def _done(self, alive, worst_kept, t, limits) -> tf.Tensor:
        """bool [A]: the length limit reached, or no alive hypothesis can enter the n-best.

        alive [A, beam] are log-probs after step t; each such hypothesis has t + 1 tokens,
        so it ends with length in [t + 2, limit]. The log-prob can only fall and the
        penalty is monotonic, so the best case is at one end of that range. worst_kept
        [A] is the n-th best finished score (-inf until n are finished).
        """
        best = tf.reduce_max(alive, axis=1)
        bound = tf.maximum(best / length_penalty(t + 2, self.alpha),
                           best / length_penalty(limits, self.alpha))
        return (t + 1 >= limits) | (bound <= worst_kept)

    def result(self, kept) -> SearchResult:
        """The kept n-best [batch, nbest], rebuilt from the back-pointers."""
        finished, out, parents, att = kept
        history = (out.stack(), parents.stack(), att.stack() if self.return_attention else None)
        valid = finished.scores > _NEG_INF  # false only if fewer than nbest could ever end
        steps = tf.where(valid, finished.steps, -1)
        lengths = tf.where(valid, steps + tf.cast(finished.last != self.eos_id, tf.int32), 0)
        flat = Finished(*(tf.reshape(x, [-1]) for x in finished._replace(steps=steps)))
        tokens, attention = _backtrack(flat, history, self.eos_id)
        keep = tf.reduce_max(lengths)

        def batch_major(x: tf.Tensor) -> tf.Tensor:
            """[T, batch * nbest, ...] -> [batch, nbest, keep, ...]."""
            x = loop.time_to_batch(x, keep)
            return tf.reshape(x, tf.concat([tf.shape(lengths), tf.shape(x)[1:]], axis=0))

        return SearchResult(tokens=batch_major(tokens), lengths=lengths,
                            scores=finished.scores,
                            attention=batch_major(attention) if attention is not None else None)


def _add_finished(finished: Finished, cand: tuple, ends: tf.Tensor, step: tf.Tensor,
                  penalty: tf.Tensor) -> Finished:
    """Merges candidates [A, C] flagged by ends [A, C] into the kept n-best [A, nbest]."""
    log_probs, rows, tokens = cand
    new_scores = tf.where(ends, log_probs / penalty, _NEG_INF)
    merged = Finished(
        tf.concat([finished.scores, new_scores], axis=1),
        tf.concat([finished.steps, tf.fill(tf.shape(rows), step)], axis=1),
        tf.concat([finished.rows, rows], axis=1),
        tf.concat([finished.last, tokens], axis=1),
    )
    best, index = tf.math.top_k(merged.scores, k=finished.scores.shape[1])
    return Finished(best, *(tf.gather(x, index, batch_dims=1) for x in merged[1:]))


def _widen(x: tf.Tensor, width: tf.Tensor, fill: int | float = 0) -> tf.Tensor:
    """Pads x's leading dimension to width rows of fill: history arrays keep one shape."""
    pad = tf.concat([[[0, width - tf.shape(x)[0]]], tf.zeros([tf.rank(x) - 1, 2], tf.int32)], 0)
    return tf.pad(x, pad, constant_values=fill)


def _backtrack(finished: Finished, history: tuple, eos_id: int) -> tuple:
    """Rebuilds hypotheses from back-pointers.

    finished fields [M]; history = (tokens [T, N], parent rows [T, N], attention
    [T, N, src_len] or None), indexed by the row each step wrote.
    Returns tokens [T, M] and attention [T, M, src_len] (or None).
    """
    step_tokens, step_rows, step_attention = history
    has_last = finished.last != eos_id

    def back(carry: tuple, elems: tuple) -> tuple:
        row, step = carry[0], elems[0]
        before = step < finished.steps
        real_last = has_last & (step == finished.steps)
        last = tf.where(real_last, finished.last, PAD_ID)
        token = tf.where(before, tf.gather(elems[1], row), last)
        row = tf.where(before, tf.gather(elems[2], row), row)
        if step_attention is None:
            return row, token
        keep = (before | real_last)[:, None]
        return row, token, tf.where(keep, tf.gather(elems[3], row), 0.0)

    elems = (tf.range(tf.shape(step_tokens)[0]), step_tokens, step_rows)
    init = (finished.rows, tf.zeros_like(finished.rows))
    if step_attention is not None:
        elems += (step_attention,)
        init += (tf.zeros([tf.shape(finished.rows)[0], tf.shape(step_attention)[2]]),)
    outputs = tf.scan(back, elems, initializer=init, reverse=True)
    return outputs[1], outputs[2] if step_attention is not None else None


def beam_search(step_fn: StepFn, initial_state, max_lengths: tf.Tensor, *, beam_size: int = 5,
                length_penalty: float = 0.6, nbest: int = 1, bos_id: int = BOS_ID,
                eos_id: int = EOS_ID, return_attention: bool = False, sentence_state=None,
                sentence_rows: bool = False) -> SearchResult:
    """Beam search with the GNMT length penalty; the nbest best per sentence, best first.

    initial_state leaves are [batch, ...] (repeated to [batch * beam, ...]), sentence_state
    leaves [batch, ...] (not repeated); max_lengths int32 [batch]. step_fn sees
    N = sentences left * beam_size rows. See translator.search.loop for the rest.
    """
    strategy = Beam(beam_size, length_penalty, nbest, bos_id, eos_id)
    return loop.run(strategy, step_fn, initial_state, max_lengths, return_attention,
                    sentence_state, sentence_rows)
