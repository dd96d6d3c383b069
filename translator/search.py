"""Greedy and beam search over a step function; knows nothing about the model.

``step_fn(tokens [N], state) -> (logits [N, vocab], new_state)``, or with a third
output ``attention [N, src_len]`` when ``return_attention=True``; the logits may also
be a ``translator.top_k.Projection`` (computed by the top-k kernel, never written out).
Every state leaf has leading dimension N. With ``sentence_state`` (leaves [batch, ...]: what
a sentence reads at every step and never changes, e.g. the encoder memory) the search calls
``step_fn(tokens, state, sentence_state)``, one sentence_state row per sentence for its
beam_size consecutive rows of tokens and state; with ``sentence_rows=True`` as
``step_fn(tokens, state, sentence_state, rows)``, sentence_state never cut and rows int32
[A] naming each searched sentence's row in it (no copy of the memory when one ends).
Both searches run the whole batch in one ``tf.while_loop``, eagerly or inside a
``tf.function``.

A sentence leaves the loop as soon as it is done: the next step runs only the rows of
the sentences still being searched (N shrinks), so a batch costs the sum of its
sentences' steps rather than its longest sentence's steps times the batch. So a
step_fn must not capture per-row tensors from outside: pass them as state or
sentence_state, which the search cuts with the rows (or indexes, with sentence_rows).

* ``max_lengths`` int32 [batch] (each >= 1) bounds the tokens a sentence may produce,
  EOS not counted. A hypothesis that has produced that many tokens is finished
  without an EOS ("forced end") and no EOS log-prob is added to its score.
* A score is a sum of log-probs, EOS included when produced. Beam search divides it
  by the GNMT penalty ``((5 + length) / 6) ** alpha``, length = decoding steps
  taken (tokens, plus one when the hypothesis ended with EOS).
* Attention rows are kept for real tokens only: the row of the step that produced
  EOS is dropped and rows after the end are zero.

Beam search stores back-pointers (parent row and token per step) rather than copying
each hypothesis every step, and rebuilds the n-best once at the end. Only the state
leaves are reordered with ``tf.gather`` each step; sentence_state is neither tiled nor
reordered, only cut to the sentences left when one is done (or, with sentence_rows, not
even that).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import tensorflow as tf

from translator.top_k import top_k_log_norm

PAD_ID, BOS_ID, EOS_ID = 0, 2, 3

State = Any  # nested dict / tuple / list of tensors, each with leading dimension N
StepFn = Callable[[tf.Tensor, State], tuple]

_NEG_INF = float("-inf")
_CEIL_TOLERANCE = 1e-6  # ratio * length + offset computed as 11.000000000000002 must give 11


class SearchResult(NamedTuple):
    """Search output, n-best sorted best first; nbest is 1 for greedy search."""

    tokens: tf.Tensor  # int32 [batch, nbest, time], PAD_ID after the end; no BOS, no EOS
    lengths: tf.Tensor  # int32 [batch, nbest], number of real tokens (EOS not counted)
    scores: tf.Tensor  # float32 [batch, nbest]; beam: log-prob / length penalty
    attention: tf.Tensor | None  # float32 [batch, nbest, time, src_len] when asked


class _Finished(NamedTuple):
    """Best finished hypotheses per sentence, each field [batch, nbest], best first."""

    scores: tf.Tensor  # float32, -inf where the slot is empty
    steps: tf.Tensor  # int32, step that chose the last token, -1 where empty
    rows: tf.Tensor  # int32, row in [0, batch * beam) that chose it at that step
    last: tf.Tensor  # int32, the last token chosen: EOS, or a real token at a forced end


def tile_beams(x: tf.Tensor, beam_size: int) -> tf.Tensor:
    """[batch, ...] -> [batch * beam_size, ...]; row b * beam_size + j is sentence b."""
    return tf.repeat(x, beam_size, axis=0)


def max_output_lengths(source_lengths: tf.Tensor, ratio: float, offset: int) -> tf.Tensor:
    """int32 [batch]: ceil(ratio * source_length + offset), at least 1."""
    lengths = tf.cast(source_lengths, tf.float64)
    raw = tf.math.ceil(ratio * lengths + offset - _CEIL_TOLERANCE)
    return tf.maximum(tf.cast(raw, tf.int32), 1)


def _length_penalty(length: tf.Tensor | int, alpha: float) -> tf.Tensor:
    """GNMT penalty ((5 + length) / 6) ** alpha, float32, same shape as ``length``."""
    length = tf.cast(length, tf.float32)
    if alpha == 0:
        return tf.ones_like(length)
    return tf.pow((5.0 + length) / 6.0, alpha)


def _as_max_lengths(max_lengths: tf.Tensor) -> tf.Tensor:
    """Validated int32 [batch]; raises InvalidArgumentError when a length is < 1."""
    max_lengths = tf.cast(max_lengths, tf.int32)
    check = tf.debugging.assert_positive(max_lengths, message="max_lengths must all be >= 1")
    with tf.control_dependencies([check]):
        return tf.identity(max_lengths)


def _call_step(
    step_fn: StepFn,
    tokens: tf.Tensor,
    state: State,
    sentence_state: State | None,
    return_attention: bool,
    rows: tf.Tensor | None = None,
) -> tuple[tf.Tensor, State, tf.Tensor | None]:
    """Returns logits [N, vocab] (as step_fn made them: float32, or bfloat16 under mixed
    precision, or a translator.top_k.Projection), the new state, attention [N, src_len]
    float32 or None.

    The searches never write out a full log-softmax: they need the log-probs of the few
    tokens they pick (logit - log-normaliser, see translator.top_k), and the top tokens by
    logit are the top tokens by log-prob.
    """
    if sentence_state is None:
        outputs = step_fn(tokens, state)
    elif rows is None:
        outputs = step_fn(tokens, state, sentence_state)
    else:
        outputs = step_fn(tokens, state, sentence_state, rows)
    expected = 3 if return_attention else 2
    if not isinstance(outputs, (tuple, list)) or len(outputs) != expected:
        got = len(outputs) if isinstance(outputs, (tuple, list)) else type(outputs).__name__
        raise ValueError(
            f"step_fn must return {expected} values when return_attention={return_attention}"
            f" (logits, state{', attention' if return_attention else ''}), got {got}"
        )
    # Keep static shapes so tf.while_loop sees the same loop-variable shapes every step.
    new_state = tf.nest.map_structure(
        lambda new, old: tf.ensure_shape(new, old.shape), outputs[1], state
    )
    attention = tf.cast(outputs[2], tf.float32) if return_attention else None
    return outputs[0], new_state, attention


def _any_rows(x: tf.Tensor) -> tf.TensorShape:
    """x's shape with the leading (row) dimension left open: rows leave the loop."""
    return tf.TensorShape([None]).concatenate(x.shape[1:])


def _take_rows(nest: State | None, index: tf.Tensor) -> State | None:
    """The rows `index` [M] of every leaf; skips the copy when index keeps every row."""
    if nest is None:
        return None
    leaves = tf.nest.flatten(nest)
    if not leaves:
        return nest
    everything = tf.equal(tf.size(index), tf.shape(leaves[0])[0])
    return tf.cond(
        everything,
        lambda: nest,
        lambda: tf.nest.map_structure(lambda x: tf.gather(x, index), nest),
    )


def _loop(cond: Callable, body: Callable, shrinking: tuple, fixed: tuple) -> tuple:
    """tf.while_loop over (step, *shrinking, *fixed): shrinking's leaves lose rows as
    sentences finish; fixed keeps its shapes."""
    loop_vars = (tf.constant(0), *shrinking, *fixed)
    invariants = (tf.TensorShape([]), *tf.nest.map_structure(_any_rows, shrinking),
                  *tf.nest.map_structure(_fixed_shape, fixed))
    return tf.while_loop(cond, body, loop_vars, shape_invariants=invariants)


def _fixed_shape(x: tf.Tensor | tf.TensorArray) -> tf.TensorShape:
    return x.element_shape if isinstance(x, tf.TensorArray) else x.shape


def _widen(x: tf.Tensor, width: tf.Tensor, fill: int | float = 0) -> tf.Tensor:
    """Pads x's leading dimension to width rows of fill: history arrays keep one shape."""
    pad = tf.concat([[[0, width - tf.shape(x)[0]]], tf.zeros([tf.rank(x) - 1, 2], tf.int32)], 0)
    return tf.pad(x, pad, constant_values=fill)


def _array(dtype: tf.DType) -> tf.TensorArray:
    """Empty growable TensorArray, one element written per step."""
    return tf.TensorArray(dtype, size=0, dynamic_size=True)


def _time_to_batch(x: tf.Tensor, keep: tf.Tensor) -> tf.Tensor:
    """[time, M, ...] -> [M, keep, ...]: batch-major, cut to the first keep steps."""
    perm = tf.concat([[1, 0], tf.range(2, tf.rank(x))], axis=0)
    return tf.transpose(x, perm)[:, :keep]


def greedy_search(
    step_fn: StepFn,
    initial_state: State,
    max_lengths: tf.Tensor,
    *,
    bos_id: int = BOS_ID,
    eos_id: int = EOS_ID,
    return_attention: bool = False,
    sentence_state: State | None = None,
    sentence_rows: bool = False,
) -> SearchResult:
    """Takes the most likely token each step; returns a SearchResult with nbest = 1.

    initial_state and sentence_state leaves are [batch, ...]; max_lengths int32 [batch].
    Scores are sums of log-probs (EOS included when produced). sentence_rows: see the
    module's docstring.
    """
    max_lengths = _as_max_lengths(max_lengths)
    batch = tf.shape(max_lengths)[0]

    def cond(t, active, prev, state, sentences, lengths, scores, out, att) -> tf.Tensor:
        return tf.size(active) > 0

    def body(t, active, prev, state, sentences, lengths, scores, out, att) -> tuple:
        # active [A]: the sentences still searched, one row each in prev, state, sentences
        logits, state, attention = _call_step(
            step_fn, prev, state, None if sentence_state is None else sentences, return_attention,
            active if sentence_rows else None)
        best_logit, best, log_norm = top_k_log_norm(logits, 1)
        best_logit, best = best_logit[:, 0], best[:, 0]
        emit = best != eos_id
        at = active[:, None]
        length = tf.gather(lengths, active) + tf.cast(emit, tf.int32)
        lengths = tf.tensor_scatter_nd_update(lengths, at, length)
        log_prob = best_logit - log_norm
        scores = tf.tensor_scatter_nd_add(scores, at, log_prob)
        token = tf.where(emit, best, PAD_ID)
        out = out.write(t, tf.tensor_scatter_nd_update(tf.fill([batch], PAD_ID), at, token))
        if return_attention:
            rows = tf.where(emit[:, None], attention, 0.0)
            att = att.write(t, tf.scatter_nd(at, rows, [batch, tf.shape(rows)[1]]))
        going = tf.reshape(tf.where(emit & (length < tf.gather(max_lengths, active))), [-1])
        state = _take_rows(state, going)
        sentences = sentences if sentence_rows else _take_rows(sentences, going)
        return (t + 1, tf.gather(active, going), tf.gather(token, going), state, sentences,
                lengths, scores, out, att)

    shrinking = (
        tf.range(batch),
        tf.fill([batch], bos_id),
        initial_state,
        () if sentence_state is None else sentence_state,
    )
    fixed = (tf.zeros([batch], tf.int32), tf.zeros([batch]), _array(tf.int32), _array(tf.float32))
    outputs = _loop(cond, body, shrinking, fixed)
    lengths, scores, out, att = outputs[5:]
    keep = tf.reduce_max(lengths)
    return SearchResult(
        tokens=_time_to_batch(out.stack(), keep)[:, None],
        lengths=lengths[:, None],
        scores=scores[:, None],
        attention=_time_to_batch(att.stack(), keep)[:, None] if return_attention else None,
    )


def _top_candidates(
    alive: tf.Tensor, logits: tf.Tensor, beam_size: int
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The best expansions of the beams, by total log-prob.

    alive [batch, beam] log-probs so far; logits [batch * beam, vocab] of the next
    token. Returns log-probs, parent rows and tokens, each [batch, C], best first,
    C = min(2 * beam, beam * vocab): enough that beam of them are not EOS. Parent rows
    index [0, batch * beam).

    A row's own best C tokens hold every candidate it can contribute (its prefix score
    is the same for all of them), so the search ranks beam * C totals, not beam * vocab.
    """
    batch, vocab = tf.shape(alive)[0], logits.shape[1]
    if vocab is not None:
        count = min(2 * beam_size, beam_size * vocab)
        per_row = min(count, vocab)
    else:  # the vocabulary is only known when the step runs: k is a tensor (no kernel)
        vocab = tf.shape(logits)[1]
        count = tf.minimum(2 * beam_size, beam_size * vocab)
        per_row = tf.minimum(count, vocab)
    row_logits, row_tokens, log_norm = top_k_log_norm(logits, per_row)
    row_log_probs = row_logits - log_norm[:, None]
    total = alive[:, :, None] + tf.reshape(row_log_probs, [batch, beam_size, per_row])
    log_probs, index = tf.math.top_k(tf.reshape(total, [batch, -1]), k=count)
    rows = index // per_row + beam_size * tf.range(batch)[:, None]
    tokens = tf.gather(tf.reshape(row_tokens, [batch, -1]), index, batch_dims=1)
    return log_probs, rows, tokens


def _add_finished(
    finished: _Finished,
    cand: tuple[tf.Tensor, tf.Tensor, tf.Tensor],
    ends: tf.Tensor,
    step: tf.Tensor,
    penalty: tf.Tensor,
) -> _Finished:
    """Merges candidates [batch, C] flagged by ends [batch, C] into the kept n-best."""
    log_probs, rows, tokens = cand
    new_scores = tf.where(ends, log_probs / penalty, _NEG_INF)
    merged = _Finished(
        tf.concat([finished.scores, new_scores], axis=1),
        tf.concat([finished.steps, tf.fill(tf.shape(rows), step)], axis=1),
        tf.concat([finished.rows, rows], axis=1),
        tf.concat([finished.last, tokens], axis=1),
    )
    best, index = tf.math.top_k(merged.scores, k=finished.scores.shape[1])
    return _Finished(best, *(tf.gather(x, index, batch_dims=1) for x in merged[1:]))


def _next_alive(
    cand: tuple[tf.Tensor, tf.Tensor, tf.Tensor], ends: tf.Tensor, beam_size: int
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Best beam_size unfinished candidates: log-probs [batch, beam], rows and tokens [N]."""
    log_probs, rows, tokens = cand
    alive, index = tf.math.top_k(tf.where(ends, _NEG_INF, log_probs), k=beam_size)
    rows = tf.reshape(tf.gather(rows, index, batch_dims=1), [-1])
    tokens = tf.reshape(tf.gather(tokens, index, batch_dims=1), [-1])
    return alive, rows, tokens


def _sentences_done(
    alive: tf.Tensor,
    worst_kept: tf.Tensor,
    step: tf.Tensor,
    max_lengths: tf.Tensor,
    penalties: tuple[tf.Tensor, tf.Tensor],
) -> tf.Tensor:
    """bool [batch]: max length reached, or no alive hypothesis can enter the n-best.

    alive [batch, beam] are log-probs after `step`; each such hypothesis has step + 1
    tokens, so it ends with length in [step + 2, max_length]. The log-prob can only
    fall and the penalty is monotonic, so the best case is at one end of that range:
    penalties = (lp(step + 2) scalar, lp(max_lengths) [batch]).
    worst_kept [batch] is the n-th best finished score (-inf until n are finished).
    """
    best = tf.reduce_max(alive, axis=1)
    bound = tf.maximum(best / penalties[0], best / penalties[1])
    return (step + 1 >= max_lengths) | (bound <= worst_kept)


def _backtrack(
    finished: _Finished, history: tuple[tf.Tensor, tf.Tensor, tf.Tensor | None], eos_id: int
) -> tuple[tf.Tensor, tf.Tensor | None]:
    """Rebuilds hypotheses from back-pointers.

    finished fields [M]; history = (tokens [T, N], parent rows [T, N],
    attention [T, N, src_len] or None), indexed by the row each step wrote.
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

    time = tf.shape(step_tokens)[0]
    elems = (tf.range(time), step_tokens, step_rows)
    init = (finished.rows, tf.zeros_like(finished.rows))
    if step_attention is not None:
        elems += (step_attention,)
        init += (tf.zeros([tf.shape(finished.rows)[0], tf.shape(step_attention)[2]]),)
    outputs = tf.scan(back, elems, initializer=init, reverse=True)
    return outputs[1], outputs[2] if step_attention is not None else None


def _check_beam_arguments(beam_size: int, nbest: int) -> None:
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    if not 1 <= nbest <= beam_size:
        raise ValueError(f"nbest must be between 1 and beam_size ({beam_size}), got {nbest}")


def beam_search(
    step_fn: StepFn,
    initial_state: State,
    max_lengths: tf.Tensor,
    *,
    beam_size: int = 5,
    length_penalty: float = 0.6,
    nbest: int = 1,
    bos_id: int = BOS_ID,
    eos_id: int = EOS_ID,
    return_attention: bool = False,
    sentence_state: State | None = None,
    sentence_rows: bool = False,
) -> SearchResult:
    """Beam search with GNMT length penalty; returns the nbest best per sentence, best first.

    initial_state leaves are [batch, ...] (tiled here to [batch * beam, ...]),
    sentence_state leaves [batch, ...] (not tiled); max_lengths int32 [batch].
    step_fn sees N = sentences left * beam_size rows. sentence_rows: see the module's
    docstring.
    """
    _check_beam_arguments(beam_size, nbest)
    max_lengths = _as_max_lengths(max_lengths)
    batch = tf.shape(max_lengths)[0]
    width = batch * beam_size  # rows of the history arrays: the most a step can have
    final_penalty = _length_penalty(max_lengths, length_penalty)  # [batch], the longest case

    def cond(t, active, prev, state, sentences, alive, finished, out, parents, att):
        return tf.size(active) > 0

    def body(t, active, prev, state, sentences, alive, finished, out, parents, att) -> tuple:
        # active [A]: the sentences still searched; alive [A, beam]; prev and state have
        # the A * beam rows b * beam + j (sentence b, hypothesis j), sentences A rows
        logits, state, attention = _call_step(
            step_fn, prev, state, None if sentence_state is None else sentences, return_attention,
            active if sentence_rows else None)
        limit = tf.gather(max_lengths, active)
        cand = _top_candidates(alive, logits, beam_size)
        ends = (cand[2] == eos_id) | (t + 1 >= limit)[:, None]
        # Only the best beam_size candidates may finish (as in fairseq): beam 1 == greedy.
        eligible = ends & (tf.range(tf.shape(ends)[1]) < beam_size)
        penalty = _length_penalty(t + 1, length_penalty)
        kept = _add_finished(_Finished(*(tf.gather(x, active) for x in finished)), cand,
                             eligible, t, penalty)
        finished = _Finished(*(tf.tensor_scatter_nd_update(x, active[:, None], new)
                               for x, new in zip(finished, kept)))
        alive, rows, tokens = _next_alive(cand, ends, beam_size)
        penalties = (_length_penalty(t + 2, length_penalty), tf.gather(final_penalty, active))
        done = _sentences_done(alive, kept.scores[:, -1], t, limit, penalties)
        going = tf.reshape(tf.where(tf.logical_not(done)), [-1])
        rows, tokens = (tf.reshape(tf.gather(tf.reshape(x, [-1, beam_size]), going), [-1])
                        for x in (rows, tokens))
        if return_attention:
            att = att.write(t, _widen(attention, width))
        state = tf.nest.map_structure(lambda x: tf.gather(x, rows), state)
        out = out.write(t, _widen(tokens, width, PAD_ID))
        parents = parents.write(t, _widen(rows, width))
        sentences = sentences if sentence_rows else _take_rows(sentences, going)
        return (t + 1, tf.gather(active, going), tokens, state, sentences,
                tf.gather(alive, going), finished, out, parents, att)

    first_alive = tf.concat(
        [tf.zeros([batch, 1]), tf.fill([batch, beam_size - 1], _NEG_INF)], axis=1
    )
    shrinking = (
        tf.range(batch),
        tf.fill([width], bos_id),
        tf.nest.map_structure(lambda x: tile_beams(x, beam_size), initial_state),
        () if sentence_state is None else sentence_state,
        first_alive,
    )
    fixed = (
        _Finished(*(tf.fill([batch, nbest], x) for x in (_NEG_INF, -1, 0, PAD_ID))),
        _array(tf.int32),
        _array(tf.int32),
        _array(tf.float32),
    )
    finished, out, parents, att = _loop(cond, body, shrinking, fixed)[6:]
    history = (out.stack(), parents.stack(), att.stack() if return_attention else None)
    return _beam_result(finished, history, eos_id)


def _beam_result(
    finished: _Finished, history: tuple[tf.Tensor, tf.Tensor, tf.Tensor | None], eos_id: int
) -> SearchResult:
    """Turns the kept n-best [batch, nbest] into a SearchResult."""
    valid = finished.scores > _NEG_INF  # false only if fewer than nbest could ever end
    steps = tf.where(valid, finished.steps, -1)
    lengths = tf.where(valid, steps + tf.cast(finished.last != eos_id, tf.int32), 0)
    flat = _Finished(*(tf.reshape(x, [-1]) for x in finished._replace(steps=steps)))
    tokens, attention = _backtrack(flat, history, eos_id)
    keep = tf.reduce_max(lengths)

    def batch_major(x: tf.Tensor) -> tf.Tensor:
        """[T, batch * nbest, ...] -> [batch, nbest, keep, ...]."""
        x = _time_to_batch(x, keep)
        return tf.reshape(x, tf.concat([tf.shape(lengths), tf.shape(x)[1:]], axis=0))

    return SearchResult(
        tokens=batch_major(tokens),
        lengths=lengths,
        scores=finished.scores,
        attention=batch_major(attention) if attention is not None else None,
    )
