"""The compiled kernels' ops (translator.kernels.library, csrc/*.cc) one by one, against
float64 references and TensorFlow's own ops: edge cases, refusals, the fallback when they
cannot be built. tests/test_kernels.py holds each to the plain operation it replaces.

The kernel tests need a C++ compiler (the project's machines and CI have one); without one
they are skipped, saying so, and the searches run on TensorFlow's ops (tested below).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from translator.kernels import build as kernel_build, cpu, library as native


@pytest.fixture
def kernel(monkeypatch):
    """native.top_k_log_norm, for tests of the kernels. Skipped without a compiler or with
    TRANSLATOR_NATIVE=0 (the TensorFlow-ops run of the suite); where the build fails,
    test_the_kernels_build_on_this_machine fails saying why, and so do these tests."""
    if not native.enabled():
        pytest.skip("TRANSLATOR_NATIVE=0: the kernels are not under test in this run")
    if kernel_build.find_compiler() is None:
        pytest.skip("no C++ compiler: the searches use TensorFlow ops (see test_fallback_*)")
    return native.top_k_log_norm


def test_the_kernels_build_on_this_machine(kernel):
    """With a compiler present, the library builds and loads for this machine's CPU."""
    assert native.library() is not None, native.status()
    assert native.status() == "on"


def _rows(n: int, seed: int) -> np.ndarray:
    """Six rows of n logits: spread like a model's, rounded so that values repeat, one
    row with -inf entries (masked tokens) and one row all equal."""
    rng = np.random.default_rng(seed)
    values = np.round(rng.normal(0, 4, size=(6, n)), 1).astype("float32")
    values[4, ::3] = -np.inf
    values[5] = 1.5
    return values


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("n,k", [(8000, 10), (8000, 1), (257, 10), (129, 4), (64, 64),
                                 (300, 70), (33, 4), (5, 5), (1, 1)])
def test_kernel_equals_top_k_and_logsumexp(kernel, dtype, n, k):
    """Values, token ids (the lower id first among ties, as tf.math.top_k) and log Z
    (within 1e-6 relative) for vocabularies below, at and above the kernel's groups of 64,
    k beyond its 64 running maxima, ties, -inf logits; in float32 and bfloat16."""
    logits = tf.cast(tf.constant(_rows(n, n + k)), dtype)
    values, ids, log_norm = kernel(logits, k)
    as_float = tf.cast(logits, tf.float32)
    want_values, want_ids = tf.math.top_k(as_float, k=k)
    np.testing.assert_array_equal(values.numpy(), want_values.numpy())
    np.testing.assert_array_equal(ids.numpy(), want_ids.numpy())
    want_norm = tf.reduce_logsumexp(tf.cast(as_float, tf.float64), -1).numpy()
    np.testing.assert_allclose(log_norm.numpy(), want_norm, rtol=1e-6, atol=1e-6)
    assert values.dtype == tf.float32 and ids.dtype == tf.int32 and log_norm.dtype == tf.float32


def test_kernel_rows_of_minus_inf_and_empty_batch(kernel):
    """A row of only -inf has log Z = -inf and the first k ids; zero rows give empty outputs."""
    values, ids, log_norm = kernel(tf.fill([2, 100], float("-inf")), 3)
    assert np.isneginf(values.numpy()).all() and np.isneginf(log_norm.numpy()).all()
    np.testing.assert_array_equal(ids.numpy(), [[0, 1, 2], [0, 1, 2]])
    values, ids, log_norm = kernel(tf.zeros([0, 100]), 3)
    assert values.shape == (0, 3) and ids.shape == (0, 3) and log_norm.shape == (0,)


def test_kernel_refuses_k_above_vocabulary_and_wrong_rank(kernel):
    with pytest.raises(tf.errors.InvalidArgumentError, match="exceeds the vocabulary"):
        kernel(tf.zeros([2, 5]), 6)
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="rank|rows, vocab"):
        kernel(tf.zeros([5]), 1)


def test_fallback_when_the_build_fails_runs_the_plain_operations(tmp_path, monkeypatch, capsys):
    """A compiler that fails: one message naming the reason, no library left behind, and
    top_k_log_norm returns None, and models get the plain operations. The build's
    marker and log are tested in test_kernel_build.py."""

    failing = tmp_path / "bin" / "c++"
    failing.parent.mkdir()
    failing.write_text("#!/bin/sh\necho 'no such header' >&2\nexit 1\n")
    failing.chmod(0o755)
    monkeypatch.setenv("CXX", str(failing))
    monkeypatch.setenv("TRANSLATOR_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TRANSLATOR_NATIVE", "1")
    monkeypatch.setattr(native, "_state", {})
    assert native.top_k_log_norm(tf.zeros([1, 4]), 1) is None
    assert native.top_k_log_norm(tf.zeros([1, 4]), 1) is None
    err = capsys.readouterr().err
    assert err.count("kernels are off") == 1 and "no such header" in err
    assert not list((tmp_path / "cache").glob("kernels/*.so"))
    from translator import kernels
    from translator.model import PLAIN

    assert kernels.choose_operations() is PLAIN  # models built or loaded now run plain


# ---- SeededDropout ------------------------------------------------------------------------


def _dropout(x, rate, seed):
    return native.dropout(tf.constant(x), rate, tf.constant(seed)).numpy()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5])
def test_dropout_keeps_each_element_with_probability_one_minus_rate(kernel, dtype, rate):
    """Over 1,000,003 elements (a last partial block of lanes included) the kept share is
    within 5 standard deviations of 1 - rate, the kept values are x / (1 - rate), and the
    mask shows no pattern: uncorrelated with its neighbour and 16 or 1,000 positions on,
    and the same within every block of lanes."""
    n = 1_000_003
    x = (np.arange(n) % 97 + 1).astype("float32") / 8.0  # no zeros: zero means dropped
    y = _dropout(tf.cast(x, dtype), rate, [11, 3]).astype("float32")
    kept = y != 0
    assert abs(kept.mean() - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / n)
    np.testing.assert_allclose(y[kept], (tf.cast(x, dtype).numpy().astype("float32") /
                                         (1 - rate))[kept], rtol=8e-3)
    for lag in (1, 16, 1000):
        assert abs(np.corrcoef(kept[lag:], kept[:-lag])[0, 1]) < 0.01
    per_lane = kept[: n // 16 * 16].reshape(-1, 16).mean(0)
    assert np.all(np.abs(per_lane - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / (n // 16)))


def test_dropout_mask_is_a_function_of_seed_and_position(kernel):
    x = np.ones((300, 500), "float32")
    first = _dropout(x, 0.3, [7, 0]) != 0
    np.testing.assert_array_equal(_dropout(x, 0.3, [7, 0]) != 0, first)  # same seed
    np.testing.assert_array_equal(_dropout(x.reshape(-1), 0.3, [7, 0]) != 0, first.ravel())
    for other in ([7, 1], [8, 0], [7, 2**33]):  # each part of the seed changes the mask
        again = _dropout(x, 0.3, other) != 0
        assert abs(np.corrcoef(first.ravel(), again.ravel())[0, 1]) < 0.01


def test_dropout_gradient_is_the_same_mask(kernel):
    x = tf.constant(np.random.default_rng(0).normal(size=(33, 17)), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = native.dropout(x, 0.4, tf.constant([1, 2]))
        loss = tf.reduce_sum(y * 3.0)
    gradient = tape.gradient(loss, x).numpy()
    np.testing.assert_allclose(gradient, np.where(y.numpy() != 0, 3.0 / 0.6, 0.0), rtol=1e-6)


def test_dropout_refuses_bad_seed_and_rate(kernel):
    lib = native.library()
    with pytest.raises(tf.errors.InvalidArgumentError, match="seed must hold 2 values"):
        lib.seeded_dropout(tf.ones([4]), tf.constant([1, 2, 3], tf.int64), rate=0.5)
    with pytest.raises(tf.errors.InvalidArgumentError, match="rate must be in"):
        lib.seeded_dropout(tf.ones([4]), tf.constant([1, 2], tf.int64), rate=1.0)


@pytest.mark.parametrize("compiled", [True, False])
def test_dropout_layer_in_training_only_with_kernel_or_keras(compiled):
    """translator.model.layers.Dropout: identity outside training; in training, either
    path drops about `rate` of the elements and scales the rest; a layer's masks follow
    its seed."""
    import keras

    from translator.model.layers import Dropout

    def layer_of(seed):
        layer = Dropout(0.25, seed=seed)
        if compiled:
            if native.library() is None:
                pytest.skip(f"the kernels are off: {native.status()}")
            from translator.kernels.operations import CompiledOperations
            layer.operations = CompiledOperations()
        return layer

    x = tf.ones((200, 300))
    layer = layer_of(5)
    np.testing.assert_array_equal(layer(x, training=False).numpy(), x.numpy())
    first = layer(x, training=True).numpy()
    assert abs((first != 0).mean() - 0.75) < 0.01
    np.testing.assert_allclose(first[first != 0], 1 / 0.75, rtol=1e-6)
    assert not np.array_equal(layer(x, training=True).numpy(), first)  # a new mask each call
    np.testing.assert_array_equal(layer_of(5)(x, training=True).numpy(), first)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(again) is Dropout and again.get_config() == layer.get_config()


# ---- SmoothedCrossEntropy -----------------------------------------------------------------


def _cross_entropy_reference(logits: np.ndarray, labels: np.ndarray, smoothing: float):
    """Loss [N] and d(sum of loss * upstream)/d logits, in float64."""
    z = logits.astype("float64")
    top = z.max(1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(z - top).sum(1))
    rows = np.arange(len(z))
    loss = log_norm - (1 - smoothing) * z[rows, labels] - smoothing * z.mean(1)
    target = np.full_like(z, smoothing / z.shape[1])
    target[rows, labels] += 1 - smoothing
    return loss, np.exp(z - log_norm[:, None]) - target


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("vocab", [8000, 37, 16])  # whole and partial blocks of lanes
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_kernel_and_gradient_against_float64(kernel, dtype, vocab, smoothing):
    rng = np.random.default_rng(vocab)
    logits = tf.cast(rng.normal(0, 4, (70, vocab)).astype("float32"), dtype)
    labels = rng.integers(0, vocab, 70).astype("int32")
    labels[:3] = [0, vocab - 1, 0]  # both ends of the vocabulary
    upstream = rng.random(70).astype("float32")
    with tf.GradientTape() as tape:
        tape.watch(logits)
        loss = native.smoothed_cross_entropy(logits, tf.constant(labels), smoothing)
        weighted = tf.reduce_sum(loss * upstream)
    gradient = tape.gradient(weighted, logits)
    assert loss.dtype == tf.float32 and gradient.dtype == logits.dtype
    want_loss, want_grad = _cross_entropy_reference(
        tf.cast(logits, "float32").numpy(), labels, smoothing)
    np.testing.assert_allclose(loss.numpy(), want_loss, rtol=1e-6, atol=2e-5)
    # the gradient is rounded to the logits' dtype (bfloat16: 8 bits)
    atol = 1e-6 if dtype == "float32" else 4e-3
    np.testing.assert_allclose(tf.cast(gradient, "float64").numpy(),
                               want_grad * upstream[:, None], atol=atol)


def test_cross_entropy_kernel_refuses_labels_outside_the_vocabulary(kernel):
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="label 5 at row 1 is outside the vocabulary of 5"):
        native.smoothed_cross_entropy(tf.zeros([2, 5]), tf.constant([0, 5]), 0.1)
    with pytest.raises(tf.errors.InvalidArgumentError, match="labels must be"):
        native.smoothed_cross_entropy(tf.zeros([2, 5]), tf.constant([0]), 0.1)


def test_cross_entropy_kernel_gives_nan_for_non_finite_logits(kernel):
    logits = tf.constant([[0.0, np.nan, 1.0], [0.0, np.inf, 1.0], [0.0, 1.0, 2.0]])
    loss = native.smoothed_cross_entropy(logits, tf.constant([0, 0, 0]), 0.1).numpy()
    assert np.isnan(loss[0]) and np.isnan(loss[1]) and np.isfinite(loss[2])


# ---- GroupedAttention ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("sentences,group,length,depth,width", [
    (6, 5, 7, 48, 40),   # a beam of 5; depths not a multiple of the 16 lanes
    (3, 1, 4, 16, 16),   # greedy
    (2, 19, 5, 32, 24),  # 19 target positions: chunks of 8, 8 and 3 queries
])
def test_grouped_attention_against_float64(kernel, dtype, sentences, group, length, depth,
                                           width):
    rng = np.random.default_rng(group)
    query = rng.normal(size=(sentences * group, depth)).astype("float32") / 4
    keys = rng.normal(size=(sentences, length, depth)).astype("float32")
    memory = rng.normal(size=(sentences, length, width)).astype("float32")
    mask = rng.random((sentences, length)) < 0.7
    mask[:, 0] = True
    mask[-1] = False  # a sentence with no valid position: uniform weights, as -1e9 gives
    context, weights = native.grouped_attention(
        *(tf.cast(x, dtype) for x in (query, keys, memory)), tf.constant(mask))
    as64 = [tf.cast(tf.cast(x, dtype), "float64").numpy() for x in (query, keys, memory)]
    q = as64[0].reshape(sentences, group, depth)
    scores = np.where(mask[:, None, :], np.einsum("agd,asd->ags", q, as64[1]), -1e9)
    want = np.exp(scores - scores.max(-1, keepdims=True))
    want /= want.sum(-1, keepdims=True)
    tolerance = 1e-6 if dtype == "float32" else 1e-2  # bfloat16 outputs: 8 bits
    np.testing.assert_allclose(tf.cast(weights, "float64").numpy(),
                               want.reshape(-1, length), atol=tolerance)
    np.testing.assert_allclose(tf.cast(context, "float64").numpy(),
                               np.einsum("ags,asm->agm", want, as64[2]).reshape(-1, width),
                               atol=tolerance * 4)


def test_grouped_attention_reads_the_named_rows(kernel):
    """With rows, group a reads stored sentence rows[a]: the same as the stored sentences
    gathered first (a search's memory is not cut when a sentence ends)."""
    rng = np.random.default_rng(11)
    query = tf.constant(rng.normal(size=(3 * 5, 8)).astype("float32"))
    keys = tf.constant(rng.normal(size=(6, 7, 8)).astype("float32"))
    memory = tf.constant(rng.normal(size=(6, 7, 4)).astype("float32"))
    mask = tf.constant(rng.random((6, 7)) < 0.8)
    rows = tf.constant([4, 0, 5])
    got = native.grouped_attention(query, keys, memory, mask, rows)
    want = native.grouped_attention(query, *(tf.gather(x, rows) for x in (keys, memory, mask)))
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    with pytest.raises(tf.errors.InvalidArgumentError, match="outside"):
        native.grouped_attention(query, keys, memory, mask, tf.constant([4, 6, 0]))


def test_grouped_attention_refuses_mismatched_shapes(kernel):
    with pytest.raises(tf.errors.InvalidArgumentError, match="must be a multiple"):
        native.grouped_attention(tf.zeros([7, 4]), tf.zeros([2, 3, 4]), tf.zeros([2, 3, 5]),
                                 tf.ones([2, 3], bool))
    with pytest.raises(tf.errors.InvalidArgumentError, match="shapes do not match"):
        native.grouped_attention(tf.zeros([4, 4]), tf.zeros([2, 3, 4]), tf.zeros([2, 2, 5]),
                                 tf.ones([2, 3], bool))


# ---- LstmSequence ---------------------------------------------------------------------------


def _lstm_reference(xw, h0, c0, kernel, lengths, reverse, dtype):
    """The recurrence in float64 numpy, batch-major, each row reversed up to its length
    when reverse; h rounded to dtype at each step, as the op stores it and reads it back
    for the next step's product."""
    def rounded(x):
        return tf.cast(tf.cast(x, dtype), "float64").numpy()

    def sigmoid(x):
        return 1 / (1 + np.exp(-x))

    time = xw.shape[1]
    order = [list(range(n))[::-1] + list(range(n, time)) if reverse else list(range(time))
             for n in lengths]
    h, c = rounded(h0), c0.astype("float64")
    hs, cs = np.zeros(xw.shape[:2] + h0.shape[1:]), np.zeros(xw.shape[:2] + h0.shape[1:])
    for t in range(time):
        at = [row[t] for row in order]
        i, f, g, o = np.split(rounded(xw[np.arange(len(at)), at]) + h @ rounded(kernel), 4, -1)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        h = rounded(sigmoid(o) * np.tanh(c))
        hs[np.arange(len(at)), at], cs[np.arange(len(at)), at] = h, c
    return hs, cs


def _lstm_inputs(time, rows, units, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(rows, time, 4 * units)).astype("float32"),
            rng.normal(size=(rows, units)).astype("float32") / 2,
            rng.normal(size=(rows, units)).astype("float32"),
            rng.normal(size=(units, 4 * units)).astype("float32") / np.sqrt(units))


def _lstm_run(args, lengths, reverse, dtype, read_h, read_c, lstm_sequence=None):
    """(hs, cs, and the gradients of sum(hs * read_h) + sum(cs * read_c) in the four inputs),
    through lstm_sequence (default: the kernel)."""
    lstm_sequence = lstm_sequence or native.lstm_sequence
    xw, h0, c0, kernel = (tf.constant(a) for a in args)
    xw, h0, kernel = (tf.cast(x, dtype) for x in (xw, h0, kernel))
    with tf.GradientTape() as tape:
        tape.watch([xw, h0, c0, kernel])
        hs, cs = lstm_sequence(xw, h0, c0, kernel, tf.constant(lengths, "int32"), reverse)
        loss = tf.reduce_sum(tf.cast(hs, "float32") * read_h) + tf.reduce_sum(cs * read_c)
    grads = tape.gradient(loss, [xw, h0, c0, kernel])
    return [tf.cast(x, "float32").numpy() for x in [hs, cs, *grads]]


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("time,rows,units", [
    (7, 64, 256),  # a training batch: two threads' blocks of 32 rows, tails of the 6-row tile
    (5, 3, 7),     # fewer rows than a tile, odd units (the bfloat16 pairs' zero partner)
    (4, 13, 33),   # blocks of 7 and 6 rows; 4 * units not a multiple of the 64-wide panel
    (1, 1, 16),
])
def test_lstm_sequence_kernel_against_float64_and_the_step_loop(
        kernel, monkeypatch, time, rows, units, reverse):
    """LstmSequence (forward and its gradient op) against the float64 recurrence and, for
    the gradients, against TensorFlow's loop over steps (tf.scan, the path without the
    op): float32 within 1e-5, bfloat16 within its 8 bits. Rows of different lengths,
    reversed or not."""
    args = _lstm_inputs(time, rows, units)
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, time + 1, size=rows)
    lengths[0] = time
    read_h, read_c = (tf.constant(rng.normal(size=(rows, time, units)).astype("float32"))
                      for _ in range(2))
    results = {dtype: _lstm_run(args, lengths, reverse, dtype, read_h, read_c)
               for dtype in ("float32", "bfloat16")}
    from translator.model.lstm import lstm_sequence

    loop = _lstm_run(args, lengths, reverse, "float32", read_h, read_c, lstm_sequence)
    for dtype, got in results.items():
        want_h, want_c = _lstm_reference(*args, lengths, reverse, dtype)
        tolerance = 1e-5 if dtype == "float32" else 2e-2
        np.testing.assert_allclose(got[0], want_h, atol=tolerance)
        np.testing.assert_allclose(got[1], want_c, atol=tolerance * 4)
        for name, grad, expected in zip(["xw", "h0", "c0", "kernel"], got[2:], loop[2:]):
            scale = np.abs(expected).max()
            assert np.abs(grad - expected).max() <= tolerance * scale, (dtype, name)


def test_lstm_sequence_kernel_empty_time_and_bad_shapes(kernel):
    xw, h0, c0, weights = _lstm_inputs(0, 2, 8)
    hs, cs = native.lstm_sequence(xw, h0, c0, weights, [0, 0])
    assert hs.shape == (2, 0, 8) and cs.shape == (2, 0, 8)
    xw, h0, c0, weights = _lstm_inputs(3, 2, 8)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"xw must be \[2, time, 32\]"):
        native.lstm_sequence(xw[:, :, :30], h0, c0, weights, [3, 3])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"kernel must be \[8, 32\]"):
        native.lstm_sequence(xw, h0, c0, weights[:7], [3, 3])
    with pytest.raises(tf.errors.InvalidArgumentError, match="h0 and c0 must be"):
        native.lstm_sequence(xw, h0, c0[:1], weights, [3, 3])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"lengths\[1\] = 4 is outside"):
        native.lstm_sequence(xw, h0, c0, weights, [3, 4], reverse=True)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"lengths must be \[2\]"):
        native.lstm_sequence(xw, h0, c0, weights, [3])


def test_lstm_sequence_kernel_without_saving_gives_the_same_outputs_and_gradients(kernel):
    """save=False (outside training: nothing kept for the backward pass) gives the same h
    and c, and a gradient, if one is asked for after all, recomputes what it needs."""
    xw, h0, c0, weights = (tf.constant(a) for a in _lstm_inputs(5, 7, 24))
    lengths = tf.constant([5, 3, 1, 5, 2, 4, 5])
    results = []
    for save in (True, False):
        with tf.GradientTape() as tape:
            tape.watch([xw, h0, c0, weights])
            hs, cs = native.lstm_sequence(xw, h0, c0, weights, lengths, True, save=save)
            loss = tf.reduce_sum(hs * hs) + tf.reduce_sum(cs)
        results.append([hs, cs, *tape.gradient(loss, [xw, h0, c0, weights])])
    for saved, recomputed in zip(*results):
        np.testing.assert_array_equal(saved.numpy(), recomputed.numpy())


def test_avx2_build_passes_the_same_checks(tmp_path):
    """Most laptops have AVX2 but not AVX-512. The kernels built for that level
    (TRANSLATOR_MARCH=x86-64-v3: 8-lane vectors, the product's 2-row tiles, no bfloat16
    dot products) pass this file's kernel checks and the model's kernel-against-TF-ops
    tests, in a process of their own with a cache of their own."""
    if not native.enabled() or kernel_build.find_compiler() is None:
        pytest.skip("no C++ compiler, or TRANSLATOR_NATIVE=0")
    if platform.machine() != "x86_64" or "avx2" not in cpu.features():
        pytest.skip("needs an x86-64 CPU with AVX2")
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "TRANSLATOR_MARCH": "x86-64-v3", "TRANSLATOR_CACHE": str(tmp_path),
           "TRANSLATOR_NATIVE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/test_kernel_library.py", "tests/test_kernels.py", "-k",
         "not avx2 and not fallback and not fused_step_choice and not built_loaded"],
        cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    assert " passed" in result.stdout and list(tmp_path.glob("kernels/kernels-*.so"))


def _projection_case(rows: int, depth: int, vocab: int, seed: int):
    """Features and weights [depth, vocab] of small multiples of 1/4 and a bias of
    multiples of 1/8: every logit is exact in float32 and bfloat16, and many repeat."""
    rng = np.random.default_rng(seed)
    features = rng.integers(-3, 4, size=(rows, depth)).astype("float32") / 2
    weights = rng.integers(-2, 3, size=(depth, vocab)).astype("float32") / 2
    bias = rng.integers(-8, 9, size=vocab).astype("float32") / 8
    return features, weights, bias


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("rows,depth,vocab,k,transposed", [
    (13, 256, 8000, 10, True), (7, 33, 1000, 3, False), (1, 1, 70, 70, True),
    (20, 770, 257, 1, False), (6, 64, 64, 64, True), (0, 16, 100, 5, False)])
def test_project_top_k_equals_matmul_top_k_and_logsumexp(kernel, dtype, rows, depth, vocab,
                                                         k, transposed):
    """ProjectTopK (the output projection and top k in one kernel, the weights packed once)
    gives tf.math.top_k's values and ids (the lower id first among ties) of features @ W
    + bias and their log-sum-exp (within 2e-6), for rows across the kernel's row blocks,
    odd depths, vocabularies across its panels and chunks, weights [depth, vocab] or a
    tied table [vocab, depth]."""
    features, weights, bias = _projection_case(rows, depth, vocab, rows + depth + k)
    table = weights.T.copy() if transposed else weights
    packed = native.pack_weights(tf.cast(table, dtype), "transposed" if transposed else "dense")
    values, ids, log_norm = native.project_top_k(tf.cast(features, dtype), packed, bias, k)
    logits = features.astype("float64") @ weights + bias
    want_values, want_ids = tf.math.top_k(tf.constant(logits), k=k)
    np.testing.assert_array_equal(values.numpy(), want_values.numpy().astype("float32"))
    np.testing.assert_array_equal(ids.numpy(), want_ids.numpy())
    want_norm = tf.reduce_logsumexp(tf.constant(logits), -1).numpy()
    np.testing.assert_allclose(log_norm.numpy(), want_norm, rtol=2e-6, atol=2e-6)
    assert values.shape == (rows, k) and ids.dtype == tf.int32 and log_norm.shape == (rows,)


def test_project_top_k_on_spread_logits_matches_top_k_log_norm(kernel):
    """Logits spread like a model's (a few large, most far below; rows 1,280 long, split
    between threads): the same top 10 and log-normaliser as TopKLogNorm on the logits
    written out."""
    rng = np.random.default_rng(5)
    features = rng.normal(0, 1, size=(1280, 256)).astype("float32")
    table = rng.normal(0, 0.3, size=(8000, 256)).astype("float32")
    bias = np.linspace(2, -8, 8000).astype("float32")
    packed = native.pack_weights(tf.constant(table), "transposed")
    values, ids, log_norm = native.project_top_k(tf.constant(features), packed, bias, 10)
    logits = tf.matmul(features, table, transpose_b=True) + bias
    want_values, want_ids, want_norm = native.top_k_log_norm(logits, 10)
    np.testing.assert_allclose(values.numpy(), want_values.numpy(), rtol=1e-5, atol=1e-5)
    assert np.mean(ids.numpy() == want_ids.numpy()) > 0.999  # rounding may swap near-ties
    np.testing.assert_allclose(log_norm.numpy(), want_norm.numpy(), rtol=2e-6, atol=2e-5)


def test_project_top_k_nan_rows_and_mismatched_packing(kernel):
    """A NaN feature makes its row's log-normaliser NaN and leaves the other rows as they
    were; weights packed for another shape or dtype are refused, naming both sizes."""
    features, weights, bias = _projection_case(3, 40, 300, 1)
    packed = native.pack_weights(tf.constant(weights))
    clean = native.project_top_k(tf.constant(features), packed, bias, 4)
    features[1, 7] = np.nan
    values, ids, log_norm = native.project_top_k(tf.constant(features), packed, bias, 4)
    assert np.isnan(log_norm[1]) and not np.isnan(log_norm.numpy()[[0, 2]]).any()
    for got, want in zip((values, ids, log_norm), clean):
        np.testing.assert_array_equal(got.numpy()[[0, 2]], want.numpy()[[0, 2]])
    with pytest.raises(tf.errors.InvalidArgumentError, match="packed weights hold"):
        native.project_top_k(tf.constant(features[:, :39]), packed, bias, 4)
    with pytest.raises(tf.errors.InvalidArgumentError, match="exceeds the vocabulary"):
        native.project_top_k(tf.constant(features), packed, bias, 301)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("rows,inputs,units", [(13, 256, 512), (7, 33, 20), (1, 5, 16),
                                               (40, 0, 40), (0, 8, 16), (300, 64, 48)])
def test_lstm_step_equals_the_cell_over_the_product_in_float64(kernel, dtype, rows, inputs,
                                                               units):
    """LstmStep ([x, h] @ W + bias and the cell in one op, W packed in gate order) against
    the LSTM step computed in float64: units not a multiple of the vector width, no input,
    no rows, rows across threads; h in the inputs' dtype (float32 within 1e-5, bfloat16
    within its rounding), c in float32."""
    rng = np.random.default_rng(rows + inputs + units)
    x = rng.normal(size=(rows, inputs)).astype("float32")
    h = rng.normal(size=(rows, units)).astype("float32")
    c = rng.normal(size=(rows, units)).astype("float32")
    stacked = (rng.normal(size=(inputs + units, 4 * units)) * 0.2).astype("float32")
    bias = rng.normal(size=4 * units).astype("float32")
    cast = lambda a: tf.cast(a, dtype)  # noqa: E731
    packed = native.pack_weights(cast(stacked), "gates")
    h_new, c_new = native.lstm_step(cast(x), cast(h), c, packed, bias)
    exact = lambda a: tf.cast(cast(a), tf.float64).numpy()  # noqa: E731
    z = np.concatenate([exact(x), exact(h)], 1) @ exact(stacked) + bias
    i, f, g, o = np.split(z, 4, axis=1)
    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    want_c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    want_h = sigmoid(o) * np.tanh(want_c)
    tolerance = 1e-5 if dtype == "float32" else 8e-3
    assert h_new.dtype == dtype and c_new.dtype == tf.float32
    np.testing.assert_allclose(c_new.numpy(), want_c, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tf.cast(h_new, tf.float32).numpy(), want_h, atol=tolerance)


def test_lstm_step_refuses_mismatched_packing_and_shapes(kernel):
    """Weights packed in another layout or for other sizes, and mismatched states, are
    refused with what was expected."""
    stacked = tf.zeros([24, 64])
    x, h, c, bias = tf.zeros([3, 8]), tf.zeros([3, 16]), tf.zeros([3, 16]), tf.zeros([64])
    with pytest.raises(tf.errors.InvalidArgumentError, match="packed weights hold"):
        native.lstm_step(x, h, c, native.pack_weights(tf.zeros([23, 64]), "gates"), bias)
    packed = native.pack_weights(stacked, "gates")
    with pytest.raises(tf.errors.InvalidArgumentError, match="h and c"):
        native.lstm_step(x, h, tf.zeros([3, 15]), packed, bias)
    with pytest.raises(tf.errors.InvalidArgumentError, match="bias must be"):
        native.lstm_step(x, h, c, packed, tf.zeros([63]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="4 \\* units"):
        native.pack_weights(tf.zeros([4, 6]), "gates")


# ---- the fused step's choice (kernel_tuning) ------------------------------------------


def test_fused_step_choice_is_measured_once_per_dtype_and_cached(
        kernel, tmp_path, monkeypatch):
    """Timed once against the unfused step at two sizes (positive medians), per dtype,
    written beside the library; later decisions read the file instead of measuring."""
    from translator.kernels import tuning as kernel_tuning

    monkeypatch.delenv("TRANSLATOR_FUSED_STEP", raising=False)
    cache = tmp_path / "kernels-x.tuning.json"
    result = kernel_tuning.decide(native.library(), cache, "float32")
    assert isinstance(result["fused"], bool) and result["dtype"] == "float32"
    assert len(result["fused_ms"]) == len(result["unfused_ms"]) == len(kernel_tuning.SIZES)
    assert all(ms > 0 for ms in result["fused_ms"] + result["unfused_ms"])
    assert result["fused"] == (sum(result["fused_ms"]) <= sum(result["unfused_ms"]))
    assert list(json.loads(cache.read_text())) == ["float32"]
    cache.write_text('{"bfloat16": {"fused": false, "fused_ms": [1], "unfused_ms": [2]}}')
    assert kernel_tuning.decide(native.library(), cache, "bfloat16")["fused"] is False
    plan = dataclasses.replace(native.build_plan(), library=tmp_path / "kernels-x.so")
    assert plan.tuning == cache
    monkeypatch.setattr(native, "_state", {**native._state, "tuning": {}, "plan": plan})
    assert native.fused_step("bfloat16") is False
    assert native.pack_for_search(tf.ones([4, 64], tf.bfloat16)) is None
    assert native.fused_step("float16") is False  # no kernel takes it


@pytest.mark.parametrize("value,expected", [("1", True), ("0", False)])
def test_fused_step_forced_by_environment(kernel, monkeypatch, value, expected):
    monkeypatch.setenv("TRANSLATOR_FUSED_STEP", value)
    assert native.fused_step() is expected
    assert (native.pack_for_search(tf.ones([4, 64])) is not None) is expected
