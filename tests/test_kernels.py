"""Each compiled kernel held to the plain operation it replaces, through the one seam.

translator.kernels.operations.CompiledOperations replaces whole methods of
translator.model.operations.Operations; here every replaced method is run both ways on the
same inputs and must give the same values and, where training differentiates it, the same
gradients (float32 within 1e-5 unless said). Then a whole model on each: the same logits,
gradients and translations. Skipped where the kernels are off (TRANSLATOR_NATIVE=0, no
compiler); tests/test_kernel_library.py tests the ops' edge cases and refusals.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from translator.kernels import library
from translator.model import PLAIN
from translator.search.top_k import top_k_log_norm
from test_model import VOCAB, batch, make_model


def _compiled(monkeypatch, fused: str):
    if not library.enabled():
        pytest.skip("TRANSLATOR_NATIVE=0: the kernels are not under test in this run")
    if library.library() is None:
        pytest.skip(f"the kernels are off: {library.status()}")
    monkeypatch.setenv("TRANSLATOR_FUSED_STEP", fused)
    from translator.kernels.operations import CompiledOperations

    return CompiledOperations()


@pytest.fixture
def compiled(monkeypatch):
    """The compiled operations, with the searches' fused decoder step (whichever this
    machine would choose: both are tested)."""
    return _compiled(monkeypatch, "1")


@pytest.fixture(params=["fused", "unfused"])
def compiled_either_step(request, monkeypatch):
    """The compiled operations with the fused decoder step, and without it."""
    return _compiled(monkeypatch, "1" if request.param == "fused" else "0")


def _rng_tensor(rng, *shape, scale=1.0):
    return tf.constant((scale * rng.normal(size=shape)).astype("float32"))


def _both(fn, inputs):
    """[(values, gradients of sum(values * random weights) in inputs)] for fn(*inputs)."""
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        outputs = fn(*inputs)
        reads = [tf.constant(np.random.default_rng(9).normal(size=o.shape).astype("float32"))
                 for o in outputs]
        loss = sum(tf.reduce_sum(tf.cast(o, tf.float32) * r) for o, r in zip(outputs, reads))
    return [o.numpy() for o in outputs], [g.numpy() for g in tape.gradient(loss, inputs)]


def _assert_same(got, want, atol=1e-5):
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, atol=atol, rtol=1e-5)


@pytest.mark.parametrize("reverse", [False, True])
def test_lstm_sequence_kernel_equals_the_plain_loop(compiled, reverse):
    """LstmSequence and its gradient op == lstm.lstm_sequence's tf.scan differentiated by
    TensorFlow, rows of different lengths, forwards and reversed."""
    rng = np.random.default_rng(0)
    inputs = [_rng_tensor(rng, 3, 6, 32), _rng_tensor(rng, 3, 8), _rng_tensor(rng, 3, 8),
              _rng_tensor(rng, 8, 32, scale=0.4)]
    lengths = tf.constant([6, 2, 4])

    def run(ops):
        return lambda *x: ops.lstm_sequence(*x, lengths, reverse, training=True)

    want, got = _both(run(PLAIN), inputs), _both(run(compiled), inputs)
    _assert_same(got[0], want[0])
    _assert_same(got[1], want[1])


def test_lstm_cell_kernel_equals_the_textbook_step_in_training(compiled):
    """LstmCell (the product, then the cell as one op; its registered gradient) ==
    lstm.lstm_step, values and gradients: what input feeding trains through."""
    rng = np.random.default_rng(1)
    x, h, c = _rng_tensor(rng, 4, 6), _rng_tensor(rng, 4, 8), _rng_tensor(rng, 4, 8)
    kernel, recurrent, bias = (_rng_tensor(rng, 6, 32), _rng_tensor(rng, 8, 32),
                               _rng_tensor(rng, 32))

    def run(ops):
        def step(x, h, c, kernel, recurrent, bias):
            weights = ops.lstm_step_weights(kernel, recurrent, bias)
            return ops.lstm_step(x, h, c, weights, training=True)
        return step

    inputs = [x, h, c, kernel, recurrent, bias]
    want, got = _both(run(PLAIN), inputs), _both(run(compiled), inputs)
    _assert_same(got[0], want[0])
    _assert_same(got[1], want[1])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_lstm_step_kernel_equals_the_textbook_step_in_search(compiled, dtype):
    """LstmStep on packed weights (searches only: no gradient) == lstm.lstm_step."""
    rng = np.random.default_rng(2)
    x, h = (tf.cast(_rng_tensor(rng, 9, n), dtype) for n in (6, 20))
    c = _rng_tensor(rng, 9, 20)
    weights = [tf.cast(_rng_tensor(rng, *shape, scale=0.3), dtype)
               for shape in ((6, 80), (20, 80), (80,))]
    packed = compiled.lstm_step_weights(*weights, for_search=True)
    assert packed.packed is not None
    got = compiled.lstm_step(x, h, c, packed)
    want = PLAIN.lstm_step(x, h, c, PLAIN.lstm_step_weights(*weights))
    atol = 1e-5 if dtype == "float32" else 2e-2
    _assert_same([tf.cast(t, tf.float32).numpy() for t in got],
                 [tf.cast(t, tf.float32).numpy() for t in want], atol)


@pytest.mark.parametrize("kind", ["dot", "general"])
def test_grouped_attention_kernel_equals_the_plain_attention(compiled, kind):
    """GroupedAttention (outside training) == attention.attend: whole target sequences, a
    beam's grouped queries, and rows naming the stored sentences each group reads."""
    from translator.model.layers import Attention

    rng = np.random.default_rng(3)
    layer = Attention(kind, 16, 16)
    memory = _rng_tensor(rng, 3, 6, 16)
    mask = tf.constant([[True] * 6, [True] * 4 + [False] * 2, [True] * 2 + [False] * 4])
    keys = layer.keys(memory)
    for query_shape, rows in [((3, 5, 16), None), ((12, 1, 16), None),
                              ((8, 1, 16), tf.constant([2, 0]))]:
        query = _rng_tensor(rng, *query_shape)
        got = compiled.attention(query, keys, memory, mask, rows, layer, training=False)
        want = PLAIN.attention(query, keys, memory, mask, rows, layer, training=False)
        _assert_same([t.numpy() for t in got], [t.numpy() for t in want], 1e-6)


def test_seeded_dropout_kernel_is_a_dropout_with_its_own_mask(compiled):
    """SeededDropout draws other masks than Keras' (by design), so values cannot match:
    like the plain dropout it keeps 1 - rate of the elements, scaled by 1 / (1 - rate);
    its gradient is the same mask, as the plain dropout's is."""
    x = tf.ones((300, 200))
    for ops in (PLAIN, compiled):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = ops.dropout(x, 0.3, keras.random.SeedGenerator(4))
        grad = tape.gradient(y, x).numpy()
        kept = y.numpy() != 0
        assert abs(kept.mean() - 0.7) < 0.01
        np.testing.assert_allclose(y.numpy()[kept], 1 / 0.7, rtol=1e-6)
        np.testing.assert_array_equal(grad, y.numpy())  # d y / d x: the scaled mask


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_kernel_equals_the_plain_loss(compiled, smoothing):
    """SmoothedCrossEntropy and its gradient op == loss.smoothed_cross_entropy."""
    rng = np.random.default_rng(5)
    logits = _rng_tensor(rng, 2, 4, 50, scale=3.0)
    labels = tf.constant([[1, 49, 2, 0], [3, 0, 7, 7]])

    def run(ops):
        return lambda z: [ops.cross_entropy(labels, z, smoothing)]

    want, got = _both(run(PLAIN), [logits]), _both(run(compiled), [logits])
    _assert_same(got[0], want[0])
    _assert_same(got[1], want[1], 1e-6)


def test_output_with_bias_columns_equals_the_plain_projection(compiled):
    """The tied output projection with the bias inside the matmul == x @ E^T + b, values
    and gradients (float32; in bfloat16 the split bias is the more precise)."""
    rng = np.random.default_rng(6)
    inputs = [_rng_tensor(rng, 2, 3, 8), _rng_tensor(rng, 40, 8), _rng_tensor(rng, 40)]

    def run(ops):
        return lambda x, table, bias: [
            ops.output(x, ops.output_weights(table, bias, True), "float32")]

    want, got = _both(run(PLAIN), inputs), _both(run(compiled), inputs)
    _assert_same(got[0], want[0])
    _assert_same(got[1], want[1])


@pytest.mark.parametrize("transposed", [True, False])
def test_top_k_kernels_equal_the_search_top_k(compiled, transposed):
    """What a search reads from a step: ProjectTopK over packed weights (fused step) and
    TopKLogNorm over the logits (unfused) == the search's own top k and log-normaliser
    of the plain logits."""
    rng = np.random.default_rng(7)
    x = _rng_tensor(rng, 10, 16)
    matrix = _rng_tensor(rng, *((300, 16) if transposed else (16, 300)))
    bias = _rng_tensor(rng, 300)
    want = top_k_log_norm(PLAIN.search_output(x, PLAIN.output_weights(matrix, bias,
                                                                      transposed)), 5)
    weights = compiled.output_weights(matrix, bias, transposed, for_search=True)
    assert weights.packed is not None
    unfused = weights._replace(packed=None)
    for scores in (compiled.search_output(x, weights), compiled.search_output(x, unfused)):
        got = top_k_log_norm(scores, 5)
        np.testing.assert_array_equal(got[1].numpy(), want[1].numpy())
        _assert_same([got[0].numpy(), got[2].numpy()], [want[0].numpy(), want[2].numpy()])


@pytest.mark.parametrize("tie_embeddings", [True, False])
@pytest.mark.parametrize("attention,input_feeding", [("general", False), ("additive", True)])
def test_a_model_on_the_kernels_equals_the_plain_model(compiled_either_step, attention,
                                                       input_feeding, tie_embeddings):
    """One model, its operations switched: the same teacher-forced logits and training
    gradients (tf.function, dropout off), and the same decoder steps: logits, and the top
    tokens and log-normalisers a search reads (with the fused step and without it), with
    a static vocabulary size (the beam search ranks candidates by it)."""
    from translator.model import MaskedCrossEntropy

    model = make_model(attention=attention, input_feeding=input_feeding,
                       tie_embeddings=tie_embeddings, share_embeddings=tie_embeddings)
    labels = np.array([[11, 12, 13, 3], [14, 3, 0, 0]], "int32")
    results = {}
    for name, ops in (("plain", PLAIN), ("compiled", compiled_either_step)):
        model.use_operations(ops)
        layers = [layer for layer in model._flatten_layers() if hasattr(type(layer), "operations")]
        assert len(layers) > 5 and all(layer.operations is ops for layer in layers)
        loss = MaskedCrossEntropy(0.1, operations=ops)

        @tf.function
        def grads(inputs):
            with tf.GradientTape() as tape:
                value = loss(labels, model(inputs, training=True))
            return tape.gradient(value, model.trainable_variables)

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32)])
        def search_step(source):
            _, _, state = model.encode(source, training=False, for_search=True)
            scores, _, _ = model.decode_step(tf.fill(tf.shape(source)[:1], 2), state,
                                             for_search=True)
            assert scores.shape[-1] == VOCAB, scores.shape
            return top_k_log_norm(scores, 3)

        _, _, state = model.encode(batch()["source"], training=False, for_search=True)
        steps = [t.numpy() for t in search_step(batch()["source"])]
        for tokens in batch()["target_in"].T:
            step_logits, _, _ = model.decode_step(tokens, state)
            scores, state, _ = model.decode_step(tokens, state, for_search=True)
            steps += [step_logits.numpy(), *(t.numpy() for t in top_k_log_norm(scores, 3))]
        gradients = [tf.convert_to_tensor(g).numpy() for g in grads(batch())]
        results[name] = [model(batch()).numpy(), *steps, *gradients]
    for got, want in zip(results["compiled"], results["plain"]):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_models_built_loaded_and_resumed_run_on_the_kernels(tiny_model, tiny_translator):
    """The seam is chosen when a model is built or loaded: a built and compiled model,
    its loss, and a loaded model folder all run on the compiled operations."""
    from translator.kernels.operations import CompiledOperations
    from translator.train.run import compiled_model

    if library.library() is None:
        pytest.skip(f"the kernels are off: {library.status()}")
    built = compiled_model(tiny_translator.config, tiny_translator.tokenizer)
    for model in (built, tiny_translator.model):
        assert isinstance(model.operations, CompiledOperations)
        assert all(layer.operations is model.operations for layer in model._flatten_layers()
                   if hasattr(type(layer), "operations"))
    assert built.loss.operations is built.operations
    checkpoint = sorted((tiny_model / "checkpoint").glob("step-*.keras"))[-1]
    resumed = keras.saving.load_model(checkpoint)
    assert resumed.operations is PLAIN  # Keras alone knows nothing of the kernels
    resumed.use_operations(built.operations)
    assert resumed.loss.operations is built.operations
