"""The search loop shared by greedy and beam search; it knows nothing about the model.

``step_fn(tokens [N], state) -> (logits [N, vocab], new_state)``, or with a third output
``attention [N, src_len]`` when ``return_attention=True``. Every state leaf has leading
dimension N: one row per hypothesis (one per sentence for greedy search, beam_size per
sentence for beam search; row b * beam_size + j is sentence b's hypothesis j).

With ``sentence_state`` (leaves [batch, ...]: what a sentence reads at every step and
never changes, e.g. the encoder memory) the loop calls
``step_fn(tokens, state, sentence_state)``, one sentence_state row per sentence for its
consecutive rows of tokens and state. With ``sentence_rows=True`` it calls
``step_fn(tokens, state, sentence_state, rows)``: sentence_state is never cut, and rows
int32 [A] names each searched sentence's row in it.

The whole batch runs in one ``tf.while_loop``, eagerly or inside a ``tf.function``. A
sentence leaves the loop as soon as it is done: the next step runs only the rows of the
sentences still searched (N shrinks), so a batch costs the sum of its sentences' steps,
not its longest sentence's steps times the batch. So a step_fn must not capture per-row
tensors from outside: pass them as state or sentence_state.

What happens at each step, and what is kept, is the strategy's (greedy.py, beam.py):

    start(batch, bos_id)          -> its per-sentence values, its kept values
    advance(t, active, limits, logits, attention, own, kept)
                                  -> a Choice: the sentences going on, their rows, the
                                     next tokens, the new own and kept values
    result(kept)                  -> a SearchResult
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import tensorflow as tf

PAD_ID, BOS_ID, EOS_ID = 0, 2, 3

State = Any  # nested dict / tuple / list of tensors, each with leading dimension N
StepFn = Callable[..., tuple]

_CEIL_TOLERANCE = 1e-6  # ratio * length + offset computed as 11.000000000000002 must give 11


class SearchResult(NamedTuple):
    """Search output, n-best sorted best first; nbest is 1 for greedy search."""

    tokens: tf.Tensor  # int32 [batch, nbest, time], PAD_ID after the end; no BOS, no EOS
    lengths: tf.Tensor  # int32 [batch, nbest], number of real tokens (EOS not counted)
    scores: tf.Tensor  # float32 [batch, nbest]; beam: log-prob / length penalty
    attention: tf.Tensor | None  # float32 [batch, nbest, time, src_len] when asked


class Choice(NamedTuple):
    """A strategy's decision at one step."""

    going: tf.Tensor  # int32 [A']: the searched sentences (indices into active) going on
    rows: tf.Tensor  # int32 [N']: the rows (of this step's N) the next step continues
    tokens: tf.Tensor  # int32 [N']: the token each of those rows feeds the next step
    own: State  # the strategy's per-sentence values, [A', ...]
    kept: State  # the strategy's values of fixed shape (results so far, history)


def max_output_lengths(source_lengths: tf.Tensor, ratio: float, offset: int) -> tf.Tensor:
    """int32 [batch]: ceil(ratio * source_length + offset), at least 1."""
    lengths = tf.cast(source_lengths, tf.float64)
    raw = tf.math.ceil(ratio * lengths + offset - _CEIL_TOLERANCE)
    return tf.maximum(tf.cast(raw, tf.int32), 1)


def run(strategy, step_fn: StepFn, initial_state: State, max_lengths: tf.Tensor,
        return_attention: bool = False, sentence_state: State | None = None,
        sentence_rows: bool = False):
    """Runs `strategy` over step_fn until every sentence is done; returns its result.

    initial_state and sentence_state leaves are [batch, ...] (initial_state is repeated
    to strategy.width rows per sentence here); max_lengths int32 [batch], each >= 1.
    """
    max_lengths = _as_max_lengths(max_lengths)
    batch = tf.shape(max_lengths)[0]

    def cond(t, active, *_):
        return tf.size(active) > 0

    def body(t, active, tokens, state, sentences, own, kept):
        # active [A]: the sentences still searched; tokens and state have their rows
        logits, state, attention = _call_step(
            step_fn, tokens, state, None if sentence_state is None else sentences,
            return_attention, active if sentence_rows else None)
        choice = strategy.advance(t, active, tf.gather(max_lengths, active), logits,
                                  attention, own, kept)
        if strategy.reorders:  # hypotheses change rows: every leaf follows its parent
            state = tf.nest.map_structure(lambda x: tf.gather(x, choice.rows), state)
        else:
            state = _take_rows(state, choice.rows)
        if not sentence_rows:
            sentences = _take_rows(sentences, choice.going)
        return (t + 1, tf.gather(active, choice.going), choice.tokens, state, sentences,
                choice.own, choice.kept)

    own, kept = strategy.start(batch, return_attention)
    width = strategy.width
    shrinking = (
        tf.range(batch),
        tf.fill([batch * width], strategy.bos_id),
        initial_state if width == 1 else
        tf.nest.map_structure(lambda x: tf.repeat(x, width, axis=0), initial_state),
        () if sentence_state is None else sentence_state,
        own,
    )
    loop_vars = (tf.constant(0), *shrinking, kept)
    invariants = (tf.TensorShape([]), *tf.nest.map_structure(_any_rows, shrinking),
                  tf.nest.map_structure(_fixed_shape, kept))
    outputs = tf.while_loop(cond, body, loop_vars, shape_invariants=invariants)
    return strategy.result(outputs[-1])


def _as_max_lengths(max_lengths: tf.Tensor) -> tf.Tensor:
    """Validated int32 [batch]; raises InvalidArgumentError when a length is < 1."""
    max_lengths = tf.cast(max_lengths, tf.int32)
    check = tf.debugging.assert_positive(max_lengths, message="max_lengths must all be >= 1")
    with tf.control_dependencies([check]):
        return tf.identity(max_lengths)


def _call_step(step_fn: StepFn, tokens: tf.Tensor, state: State, sentence_state: State | None,
               return_attention: bool, rows: tf.Tensor | None = None) -> tuple:
    """Returns the logits [N, vocab] (as step_fn made them: see top_k.top_k_log_norm),
    the new state, and attention [N, src_len] float32 or None."""
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


def _take_rows(nest: State, index: tf.Tensor) -> State:
    """The rows `index` [M] of every leaf; skips the copy when index keeps every row."""
    leaves = tf.nest.flatten(nest)
    if not leaves:
        return nest
    everything = tf.equal(tf.size(index), tf.shape(leaves[0])[0])
    return tf.cond(
        everything,
        lambda: nest,
        lambda: tf.nest.map_structure(lambda x: tf.gather(x, index), nest),
    )


def _any_rows(x: tf.Tensor) -> tf.TensorShape:
    """x's shape with the leading (row) dimension left open: rows leave the loop."""
    return tf.TensorShape([None]).concatenate(x.shape[1:])


def _fixed_shape(x: tf.Tensor | tf.TensorArray) -> tf.TensorShape:
    return x.element_shape if isinstance(x, tf.TensorArray) else x.shape


def history_array(dtype: tf.DType) -> tf.TensorArray:
    """Empty growable TensorArray, one element written per step."""
    return tf.TensorArray(dtype, size=0, dynamic_size=True)


def time_to_batch(x: tf.Tensor, keep: tf.Tensor) -> tf.Tensor:
    """[time, M, ...] -> [M, keep, ...]: batch-major, cut to the first keep steps."""
    perm = tf.concat([[1, 0], tf.range(2, tf.rank(x))], axis=0)
    return tf.transpose(x, perm)[:, :keep]
