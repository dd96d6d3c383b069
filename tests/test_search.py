"""Tests for translator.search with hand-written step functions (no model, no training).

Each step function reads its logits from a table [sentence, time, previous token, vocab],
so every test chooses the exact distributions the search sees. The state also carries a
"signature" of the prefix, returned as attention, which lets tests check that attention
(and state) follow the beams.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import tensorflow as tf

from translator.search import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SearchResult,
    beam_search,
    greedy_search,
    max_output_lengths,
)

VOCAB = 6
A, B = 4, 5  # the two "word" tokens; 0-3 are pad, unk, bos, eos
STEPS = 8  # time steps in a table; later steps reuse the last one
HISTORY = 1.0  # weight of the prefix signature in random-table logits (state must follow beams)


def _logits(probs: dict[int, float]) -> np.ndarray:
    """[VOCAB] logits giving these probabilities (1e-6 for every other token)."""
    p = np.full(VOCAB, 1e-6)
    for token, value in probs.items():
        p[token] = value
    return np.log(p)


def _eos_table(sentences: int = 1) -> np.ndarray:
    """[sentences, STEPS, VOCAB, VOCAB] where EOS is almost certain everywhere."""
    return np.tile(_logits({EOS_ID: 0.99, A: 0.01}), (sentences, STEPS, VOCAB, 1))


def _random_table(sentences: int, seed: int) -> np.ndarray:
    """[sentences, STEPS, VOCAB, VOCAB] random logits; pad/unk/bos made unlikely.

    EOS is made unlikely for the first 3 steps so that hypotheses grow and beams reorder.
    """
    table = np.random.default_rng(seed).normal(0.0, 1.5, (sentences, STEPS, VOCAB, VOCAB))
    table[..., [PAD_ID, 1, BOS_ID]] -= 6.0
    table[:, :3, :, EOS_ID] -= 4.0
    return table


def _table_step(table: np.ndarray, with_attention: bool = False, history: float = 0.0):
    """step_fn returning table[sentence, time, previous token] + history * signature.

    The state's signature [N, VOCAB] is 0.5 * previous + one_hot(previous token); it
    depends on the whole prefix and is returned as attention when asked. Logits [N, VOCAB].
    """
    logits_table = tf.constant(table, tf.float32)
    last = table.shape[1] - 1

    def step(tokens: tf.Tensor, state: dict) -> tuple:
        time = tf.minimum(state["time"], last)
        index = tf.stack([state["sentence"], time, tokens], axis=1)
        signature = 0.5 * state["signature"] + tf.one_hot(tokens, VOCAB)
        logits = tf.gather_nd(logits_table, index) + history * signature
        new_state = dict(state, time=state["time"] + 1, signature=signature)
        return (logits, new_state, signature) if with_attention else (logits, new_state)

    return step


def _state(sentences: list[int]) -> dict:
    """Initial state for these sentence ids, leaves [batch, ...]."""
    n = len(sentences)
    return {
        "sentence": tf.constant(sentences, tf.int32),
        "time": tf.zeros([n], tf.int32),
        "signature": tf.zeros([n, VOCAB]),
    }


def _reference_logprob(
    table: np.ndarray, sentence: int, tokens: list[int], max_length: int, history: float = 0.0
) -> tuple[float, int]:
    """(sum of log-probs, decoding steps) of tokens, plus EOS unless cut at max_length."""
    sequence = list(tokens) + ([EOS_ID] if len(tokens) < max_length else [])
    previous, total, signature = BOS_ID, 0.0, np.zeros(VOCAB)
    for t, token in enumerate(sequence):
        signature = 0.5 * signature + np.eye(VOCAB)[previous]
        logits = table[sentence, min(t, table.shape[1] - 1), previous] + history * signature
        total += logits[token] - np.log(np.sum(np.exp(logits)))
        previous = token
    return total, len(sequence)


def _reference_attention(tokens: list[int]) -> np.ndarray:
    """[len, VOCAB]: the signature each token of this hypothesis was produced with."""
    signature, rows = np.zeros(VOCAB), []
    for previous in ([BOS_ID] + list(tokens))[: len(tokens)]:
        signature = 0.5 * signature + np.eye(VOCAB)[previous]
        rows.append(signature)
    return np.array(rows).reshape(len(tokens), VOCAB)


def _hypotheses(result: SearchResult, sentence: int) -> list[list[int]]:
    """Token lists of one sentence's n-best, without padding."""
    tokens, lengths = result.tokens.numpy()[sentence], result.lengths.numpy()[sentence]
    return [list(row[:length]) for row, length in zip(tokens, lengths)]


def _assert_same_sentence(a: SearchResult, i: int, b: SearchResult, j: int) -> None:
    """Sentence i of a equals sentence j of b (tokens, lengths, scores, attention)."""
    assert _hypotheses(a, i) == _hypotheses(b, j)
    np.testing.assert_array_equal(a.lengths.numpy()[i], b.lengths.numpy()[j])
    np.testing.assert_allclose(a.scores.numpy()[i], b.scores.numpy()[j], rtol=1e-6)
    if a.attention is not None:
        for n, length in enumerate(a.lengths.numpy()[i]):
            np.testing.assert_allclose(
                a.attention.numpy()[i, n, :length], b.attention.numpy()[j, n, :length]
            )


def test_max_output_lengths_rounds_up_and_is_at_least_one():
    lengths = max_output_lengths(tf.constant([0, 10, 7]), ratio=1.1, offset=0)
    np.testing.assert_array_equal(lengths.numpy(), [1, 11, 8])
    lengths = max_output_lengths(tf.constant([0, 10, 7]), ratio=1.5, offset=2)
    np.testing.assert_array_equal(lengths.numpy(), [2, 17, 13])


def test_beam_of_one_matches_greedy():
    table, max_lengths = _random_table(4, seed=1), tf.constant([3, 6, 8, 5])
    step = _table_step(table, history=HISTORY)
    greedy = greedy_search(step, _state([0, 1, 2, 3]), max_lengths)
    beam = beam_search(step, _state([0, 1, 2, 3]), max_lengths, beam_size=1, length_penalty=0.0)
    np.testing.assert_array_equal(beam.tokens.numpy(), greedy.tokens.numpy())
    np.testing.assert_array_equal(beam.lengths.numpy(), greedy.lengths.numpy())
    np.testing.assert_allclose(beam.scores.numpy(), greedy.scores.numpy(), rtol=1e-6)
    for s in range(4):
        tokens = _hypotheses(greedy, s)[0]
        expected, _ = _reference_logprob(table, s, tokens, max_lengths[s], HISTORY)
        np.testing.assert_allclose(greedy.scores.numpy()[s, 0], expected, rtol=1e-5)


def test_nbest_sorted_by_score():
    table, max_lengths = _random_table(3, seed=2), [4, 7, 6]
    result = beam_search(
        _table_step(table, history=HISTORY),
        _state([0, 1, 2]),
        tf.constant(max_lengths),
        beam_size=4,
        nbest=4,
        length_penalty=0.6,
    )
    scores = result.scores.numpy()
    assert scores.shape == (3, 4) and np.all(np.isfinite(scores))
    assert np.all(np.diff(scores, axis=1) <= 0)
    for s in range(3):
        hypotheses = _hypotheses(result, s)
        assert len({tuple(h) for h in hypotheses}) == 4  # beams do not duplicate
        for n, tokens in enumerate(hypotheses):  # scores match the tokens: back-pointers right
            logprob, steps = _reference_logprob(table, s, tokens, max_lengths[s], HISTORY)
            np.testing.assert_allclose(scores[s, n], logprob / ((5 + steps) / 6) ** 0.6, rtol=1e-5)


def test_eos_ends_hypothesis():
    table = _eos_table(2)
    table[0, :, :, :] = _logits({A: 0.9, EOS_ID: 0.1})  # after EOS the search would say A
    table[0, 1, A] = _logits({EOS_ID: 0.9, A: 0.1})
    table[1, :, :, :] = _logits({B: 0.9, EOS_ID: 0.1})  # sentence 1 runs to max length
    for search in (greedy_search, functools.partial(beam_search, beam_size=3, nbest=2)):
        result = search(_table_step(table), _state([0, 1]), tf.constant([5, 4]))
        time = result.tokens.shape[-1]
        assert list(result.tokens.numpy()[0, 0]) == [A] + [PAD_ID] * (time - 1)
        assert result.lengths.numpy()[0, 0] == 1
        assert EOS_ID not in result.tokens.numpy()


def test_max_length_is_respected():
    table = np.tile(_logits({A: 0.6, B: 0.4, EOS_ID: 1e-9}), (2, STEPS, VOCAB, 1))
    max_lengths = [2, 5]
    for search in (greedy_search, functools.partial(beam_search, beam_size=3, nbest=3)):
        result = search(_table_step(table), _state([0, 1]), tf.constant(max_lengths))
        assert result.tokens.shape[-1] == 5
        np.testing.assert_array_equal(result.lengths.numpy()[:, 0], max_lengths)
        assert np.all(result.tokens.numpy()[0, :, 2:] == PAD_ID)
        assert EOS_ID not in result.tokens.numpy()
        assert _hypotheses(result, 1)[0] == [A] * 5
        logprob, _ = _reference_logprob(table, 1, [A] * 5, 5)  # no EOS log-prob added
        if search is greedy_search:
            np.testing.assert_allclose(result.scores.numpy()[1, 0], logprob, rtol=1e-5)


def test_length_penalty_changes_winner():
    table = _eos_table()
    table[0, 0, BOS_ID] = _logits({A: 0.55, B: 0.45})
    table[0, 1:5, B] = _logits({B: 1.0})  # B B B B B then EOS: longer, lower log-prob
    short, long = [A], [B] * 5
    step, state, max_lengths = _table_step(table), _state([0]), tf.constant([10])
    for alpha, winner in ((0.0, short), (1.0, long)):
        # nbest=1: the search must not stop once `short` ends while `long` can still win.
        best = beam_search(step, state, max_lengths, beam_size=2, length_penalty=alpha)
        assert _hypotheses(best, 0) == [winner]
        both = beam_search(step, state, max_lengths, beam_size=2, nbest=2, length_penalty=alpha)
        assert _hypotheses(both, 0) == [winner, long if winner == short else short]


def test_search_stops_once_no_alive_hypothesis_can_win():
    calls = []
    eos_step = _table_step(_eos_table(2))

    def counting_step(tokens: tf.Tensor, state: dict) -> tuple:
        calls.append(1)  # eager: the loop body runs once per step
        return eos_step(tokens, state)

    beam = functools.partial(beam_search, beam_size=3, nbest=2, length_penalty=0.0)
    for search in (greedy_search, beam):
        calls.clear()
        result = search(counting_step, _state([0, 1]), tf.constant([50, 40]))
        assert len(calls) <= 2  # not 50: both n-best end by step 2 and nothing alive can win
        assert result.lengths.numpy()[0, 0] == 0


def test_batch_matches_each_sentence_alone():
    table, max_lengths = _random_table(3, seed=3), [3, 7, 5]
    searches = (
        greedy_search,
        functools.partial(beam_search, beam_size=3, nbest=2, length_penalty=0.6),
    )
    for search in searches:
        step = _table_step(table, with_attention=True, history=HISTORY)
        batch = search(step, _state([0, 1, 2]), tf.constant(max_lengths), return_attention=True)
        for s in range(3):
            alone = search(step, _state([s]), tf.constant([max_lengths[s]]), return_attention=True)
            _assert_same_sentence(batch, s, alone, 0)


def test_beam_finds_better_than_greedy():
    table = _eos_table()
    table[0, 0, BOS_ID] = _logits({A: 0.6, B: 0.4})
    table[0, 1, A] = _logits({A: 0.36, B: 0.34, EOS_ID: 0.30})  # A leads nowhere good
    greedy = greedy_search(_table_step(table), _state([0]), tf.constant([6]))
    beam = beam_search(
        _table_step(table), _state([0]), tf.constant([6]), beam_size=2, length_penalty=0.0
    )
    assert _hypotheses(greedy, 0) == [[A, A]]
    assert _hypotheses(beam, 0) == [[B]]
    assert beam.scores.numpy()[0, 0] > greedy.scores.numpy()[0, 0]


def test_attention_returned_with_expected_shape_and_follows_beams():
    table, max_lengths = _random_table(2, seed=4), [4, 6]
    step = _table_step(table, with_attention=True, history=HISTORY)
    searches = (greedy_search, functools.partial(beam_search, beam_size=3, nbest=3))
    for search, nbest in zip(searches, (1, 3)):
        result = search(step, _state([0, 1]), tf.constant(max_lengths), return_attention=True)
        time = result.tokens.shape[-1]
        assert result.attention.shape == (2, nbest, time, VOCAB)
        attention = result.attention.numpy()
        for s in range(2):
            for n, tokens in enumerate(_hypotheses(result, s)):
                np.testing.assert_allclose(
                    attention[s, n, : len(tokens)], _reference_attention(tokens), atol=1e-6
                )
                assert np.all(attention[s, n, len(tokens) :] == 0.0)
    plain = beam_search(_table_step(table), _state([0, 1]), tf.constant(max_lengths))
    assert plain.attention is None


def _sentence_table_step(table: np.ndarray, rows_seen: list[int] | None = None):
    """As _table_step(table, True, HISTORY), but the sentence id comes from sentence_state
    (one row per sentence, read by its beam's rows); records each step's row count."""
    step = _table_step(table, with_attention=True, history=HISTORY)

    def sentence_step(tokens: tf.Tensor, state: dict, sentences: dict) -> tuple:
        if rows_seen is not None:
            rows_seen.append(int(tokens.shape[0]))  # eager: once per step
        beam = tf.shape(tokens)[0] // tf.shape(sentences["sentence"])[0]
        logits, new_state, signature = step(
            tokens, {**state, "sentence": tf.repeat(sentences["sentence"], beam)})
        new_state = {k: v for k, v in new_state.items() if k != "sentence"}
        return logits, new_state, signature

    return sentence_step


def test_sentence_state_is_one_row_per_sentence_and_gives_the_same_results():
    table, max_lengths = _random_table(3, seed=6), tf.constant([3, 7, 5])
    searches = (greedy_search, functools.partial(beam_search, beam_size=3, nbest=2))
    for search in searches:
        plain = search(_table_step(table, with_attention=True, history=HISTORY),
                       _state([0, 1, 2]), max_lengths, return_attention=True)
        state = {k: v for k, v in _state([2, 0, 1]).items() if k != "sentence"}
        split = search(_sentence_table_step(table), state, max_lengths, return_attention=True,
                       sentence_state={"sentence": tf.constant([0, 1, 2])})
        for s in range(3):
            _assert_same_sentence(plain, s, split, s)


def test_sentence_rows_index_the_uncut_sentence_state():
    """With sentence_rows the search never cuts sentence_state: step_fn gets it whole and
    the row of each sentence still searched (sentence 1 ends first here, so the rows skip
    it), and the results are those of the cutting search."""
    table, max_lengths = _random_table(3, seed=6), tf.constant([3, 1, 5])
    state = {k: v for k, v in _state([2, 0, 1]).items() if k != "sentence"}
    sentences = {"sentence": tf.constant([0, 1, 2])}
    searches = (greedy_search, functools.partial(beam_search, beam_size=3, nbest=2))
    for search in searches:
        seen: list[list[int]] = []
        cut_step = _sentence_table_step(table)

        def indexed_step(tokens, state, whole, rows):
            assert int(tf.shape(whole["sentence"])[0]) == 3  # never cut
            seen.append(rows.numpy().tolist())
            return cut_step(tokens, state, {"sentence": tf.gather(whole["sentence"], rows)})

        cut = search(cut_step, state, max_lengths, return_attention=True,
                     sentence_state=sentences)
        indexed = search(indexed_step, state, max_lengths, return_attention=True,
                         sentence_state=sentences, sentence_rows=True)
        assert seen[0] == [0, 1, 2] and seen[-1] == [2] and [0, 2] in seen
        for s in range(3):
            _assert_same_sentence(cut, s, indexed, s)


def test_finished_sentences_leave_the_loop():
    table = np.tile(_logits({A: 0.6, B: 0.4, EOS_ID: 1e-9}), (2, STEPS, VOCAB, 1))
    state = {k: v for k, v in _state([0, 0]).items() if k != "sentence"}
    sentences = {"sentence": tf.constant([0, 1])}
    for search, beam in ((greedy_search, 1), (functools.partial(beam_search, beam_size=3), 3)):
        rows: list[int] = []
        result = search(_sentence_table_step(table, rows), state, tf.constant([2, 5]),
                        sentence_state=sentences, return_attention=True)
        assert rows == [2 * beam] * 2 + [beam] * 3  # sentence 0 stops after its 2 tokens
        np.testing.assert_array_equal(result.lengths.numpy()[:, 0], [2, 5])


def test_runs_inside_tf_function():
    table, max_lengths = _random_table(3, seed=5), tf.constant([4, 6, 2])
    step = _table_step(table, with_attention=True, history=HISTORY)
    signature = [tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.int32)]
    searches = (greedy_search, functools.partial(beam_search, beam_size=3, nbest=2))
    for search in searches:

        @tf.function(input_signature=signature)
        def run(sentences: tf.Tensor, lengths: tf.Tensor, search=search) -> SearchResult:
            batch = tf.shape(sentences)[0]
            state = {
                "sentence": sentences,
                "time": tf.zeros_like(sentences),
                "signature": tf.zeros([batch, VOCAB]),
            }
            return search(step, state, lengths, return_attention=True)

        graph = run(tf.constant([0, 1, 2]), max_lengths)
        eager = search(step, _state([0, 1, 2]), max_lengths, return_attention=True)
        for s in range(3):
            _assert_same_sentence(graph, s, eager, s)


def test_invalid_arguments_raise():
    step, state, lengths = _table_step(_eos_table()), _state([0]), tf.constant([3])
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(step, state, lengths, beam_size=0)
    with pytest.raises(ValueError, match="nbest"):
        beam_search(step, state, lengths, beam_size=2, nbest=3)
    with pytest.raises(ValueError, match="nbest"):
        beam_search(step, state, lengths, beam_size=2, nbest=0)
    with pytest.raises(ValueError, match="return_attention"):
        greedy_search(step, state, lengths, return_attention=True)
    with pytest.raises(tf.errors.InvalidArgumentError, match="max_lengths"):
        greedy_search(step, state, tf.constant([0]))


@pytest.mark.parametrize(
    "n,k", [(8000, 10), (7919, 10), (300, 10), (129, 4), (97, 5), (50, 10), (7, 7), (1, 1)])
def test_chunked_top_k_equals_top_k(n, k):
    """The beam's two-pass top-k (chunk maxima, then the best chunks) against
    tf.math.top_k, on random rows with repeated values and a row of -inf."""
    from translator.search.top_k import row_top_k

    rng = np.random.default_rng(n)
    values = np.round(rng.normal(size=(6, n)), 1).astype("float32")  # many ties
    values[5] = -np.inf
    got_values, got_ids = row_top_k(tf.constant(values), tf.constant(k))
    want_values, _ = tf.math.top_k(tf.constant(values), k=k)
    np.testing.assert_array_equal(got_values.numpy(), want_values.numpy())
    ids = got_ids.numpy()
    assert ((ids >= 0) & (ids < n)).all()
    np.testing.assert_array_equal(np.take_along_axis(values, ids, 1), want_values.numpy())
    for row in range(5):  # distinct positions
        assert len(set(ids[row])) == k
