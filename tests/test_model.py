"""The Keras model: shapes, padding, teacher forcing vs step-by-step decoding, save/load."""

from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from translator.model import MaskedCrossEntropy, Seq2Seq

VOCAB = 60


def make_model(**overrides) -> Seq2Seq:
    settings = dict(embedding_dim=16, encoder_units=8, decoder_units=16, dropout=0.0,
                    encoder_layers=2, decoder_layers=2)
    settings.update(overrides)
    keras.utils.set_random_seed(7)
    model = Seq2Seq(VOCAB, VOCAB, **settings)
    model.build()
    return model


def batch(pad_source: int = 0, pad_target: int = 0) -> dict[str, np.ndarray]:
    """Two sentences of different lengths, right-padded (id 0), plus optional extra padding."""
    source = np.array([[5, 6, 7, 8, 3], [9, 10, 3, 0, 0]], "int32")
    target = np.array([[2, 11, 12, 13], [2, 14, 0, 0]], "int32")
    source = np.pad(source, ((0, 0), (0, pad_source)))
    target = np.pad(target, ((0, 0), (0, pad_target)))
    return {"source": source, "target_in": target}


REAL_TARGET = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], bool)  # real (non-pad) target positions

VARIANTS = list(itertools.product(["dot", "general", "additive"], [False, True]))


def test_logits_have_shape_batch_time_vocab():
    model = make_model()
    logits = model(batch())
    assert tuple(logits.shape) == (2, 4, VOCAB)
    assert logits.dtype == "float32"


@pytest.mark.parametrize("attention,input_feeding", VARIANTS)
def test_padding_does_not_change_outputs_at_real_positions(attention, input_feeding):
    model = make_model(attention=attention, input_feeding=input_feeding)
    plain = np.asarray(model(batch()))
    padded = np.asarray(model(batch(pad_source=3, pad_target=2)))[:, :4]
    np.testing.assert_allclose(padded[REAL_TARGET], plain[REAL_TARGET], atol=1e-5)


def test_attention_gives_no_weight_to_source_padding():
    model = make_model()
    _, _, state = model.encode(batch(pad_source=3)["source"])
    _, _, weights = model.decode_step(np.array([2, 2], "int32"), state)
    weights = np.asarray(weights)
    assert weights.shape == (2, 8)
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-6)
    assert np.all(weights[0, 5:] == 0) and np.all(weights[1, 3:] == 0)


@pytest.mark.parametrize("attention,input_feeding", VARIANTS)
def test_teacher_forced_logits_equal_step_by_step_logits(attention, input_feeding):
    model = make_model(attention=attention, input_feeding=input_feeding)
    inputs = batch()
    forced = np.asarray(model(inputs))
    _, _, state = model.encode(inputs["source"])
    steps = []
    for t in range(inputs["target_in"].shape[1]):
        logits, state, _ = model.decode_step(inputs["target_in"][:, t], state)
        steps.append(np.asarray(logits))
    stepped = np.stack(steps, 1)
    np.testing.assert_allclose(stepped[REAL_TARGET], forced[REAL_TARGET], atol=1e-5)


def test_a_search_computes_keys_and_step_weights_once_per_batch(tiny_translator, monkeypatch):
    """The attention keys (a projection of the whole memory) and the decoder's cast
    weights are computed once when a batch is encoded, not at every decoder step: a
    search of many steps calls each once when it is traced, and the weights it reads are
    in the compute dtype."""
    from translator.translator import Translator

    model = tiny_translator.model
    calls = {"keys": 0, "step_weights": 0}
    for owner, name in ((model.attention, "keys"), (model, "step_weights")):
        original = getattr(owner, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)
        monkeypatch.setattr(owner, name, counted)
    fresh = Translator(model, tiny_translator.tokenizer, tiny_translator.config)
    out = fresh.translate(["A man is riding a bicycle down the street.", "Two dogs."],
                          beam=3)
    assert len(out) == 2 and calls == {"keys": 1, "step_weights": 1}
    weights = model.step_weights(for_search=True)
    assert weights["embedding"].dtype == model.compute_dtype
    assert weights["attentional"][0].dtype == model.compute_dtype


@pytest.mark.parametrize("attention,input_feeding", [("general", False), ("additive", True)])
def test_save_then_load_gives_identical_logits(tmp_path, attention, input_feeding):
    model = make_model(attention=attention, input_feeding=input_feeding, tie_embeddings=False,
                       share_embeddings=False)
    inputs = batch()
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.get_config() == model.get_config()
    np.testing.assert_array_equal(np.asarray(loaded(inputs)), np.asarray(model(inputs)))


def test_word_dropout_drops_whole_words_in_training_only(tmp_path):
    """Each position's embedding is kept whole (scaled by 1/(1-rate)) or zeroed whole, at
    about the rate; inference is untouched; the setting survives save and load."""
    model = make_model(word_dropout=0.25)
    embedded = tf.ones((64, 30, 16))
    dropped = np.asarray(model._drop_words(embedded, training=True))
    per_position = dropped.reshape(-1, 16)
    np.testing.assert_allclose(np.unique(per_position), [0.0, 1 / 0.75], rtol=1e-6)
    assert (per_position.min(axis=1) == per_position.max(axis=1)).all()  # whole words
    assert abs((per_position[:, 0] == 0).mean() - 0.25) < 0.03
    np.testing.assert_array_equal(np.asarray(model._drop_words(embedded, training=False)),
                                  np.asarray(embedded))
    inputs = batch()
    kept = np.asarray(model(inputs))
    model.word_dropout = None
    np.testing.assert_array_equal(np.asarray(model(inputs)), kept)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert loaded.get_config()["word_dropout"] == 0.25 and loaded.word_dropout.rate == 0.25
    assert make_model().word_dropout is None  # no layer (and no seed state) when off


def test_tied_and_shared_embeddings_use_one_matrix():
    tied = make_model(tie_embeddings=True, share_embeddings=True)
    untied = make_model(tie_embeddings=False, share_embeddings=False)
    assert tied.src_embedding is tied.tgt_embedding
    assert tied.count_params() < untied.count_params()


def test_shared_embeddings_need_a_joint_vocabulary():
    with pytest.raises(ValueError, match="joint vocabulary"):
        Seq2Seq(50, 60, share_embeddings=True)


def test_dot_attention_needs_matching_sizes():
    with pytest.raises(ValueError, match="dot attention"):
        make_model(attention="dot", decoder_units=12)


def test_bfloat16_model_gives_bfloat16_logits_and_a_float32_loss():
    """Training logits stay in the compute dtype (no cast pass); the loss reads them as
    they are and computes in float32: equal to the loss of the same values in float32."""
    model = make_model(dtype="mixed_bfloat16")
    assert model.decoder_lstms[0].compute_dtype == "bfloat16"
    logits = model(batch())
    assert logits.dtype == "bfloat16"
    labels = np.array([[11, 12, 13, 3], [14, 3, 0, 0]], "int32")  # batch()'s targets, shifted
    loss_fn = MaskedCrossEntropy(0.1)
    loss = loss_fn(labels, logits)
    assert loss.dtype == "float32"
    np.testing.assert_allclose(float(loss), float(loss_fn(labels, tf.cast(logits, "float32"))),
                               rtol=1e-6)


def test_loss_ignores_padding_and_applies_label_smoothing():
    logits = np.random.default_rng(0).normal(size=(2, 3, 5)).astype("float32")
    labels = np.array([[1, 2, 0], [3, 0, 0]], "int32")
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    real = [(0, 0), (0, 1), (1, 0)]
    nll = np.mean([-log_probs[b, t, labels[b, t]] for b, t in real])
    uniform = np.mean([-log_probs[b, t].mean() for b, t in real])
    assert float(MaskedCrossEntropy(0.0)(labels, logits)) == pytest.approx(nll, rel=1e-5)
    assert float(MaskedCrossEntropy(0.2)(labels, logits)) == pytest.approx(
        0.8 * nll + 0.2 * uniform, rel=1e-5)
    changed = logits.copy()
    changed[0, 2] += 100.0  # a padded position
    assert float(MaskedCrossEntropy(0.1)(labels, changed)) == pytest.approx(
        float(MaskedCrossEntropy(0.1)(labels, logits)), rel=1e-6)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_loss_gradient_equals_autodiff_of_the_plain_formula(smoothing):
    """The loss (TensorFlow's fused softmax cross-entropy against the smoothed targets)
    and its gradient against TensorFlow's gradient of the formula written out:
    (1 - s) * NLL - s * mean log-prob, padding included (its gradient must be zero)."""
    import tensorflow as tf

    logits = tf.constant(np.random.default_rng(1).normal(size=(2, 4, 7)).astype("float32"))
    labels = tf.constant([[1, 6, 2, 0], [3, 0, 0, 0]], tf.int32)
    mask = tf.cast(labels != 0, tf.float32)

    def plain(z):
        log_probs = tf.nn.log_softmax(z, -1)
        nll = -tf.reduce_sum(log_probs * tf.one_hot(labels, 7), -1)
        loss = (1 - smoothing) * nll - smoothing * tf.reduce_mean(log_probs, -1)
        return tf.reduce_sum(loss * mask) / tf.reduce_sum(mask)

    grads = []
    for fn in (plain, lambda z: MaskedCrossEntropy(smoothing)(labels, z)):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            value = fn(logits)
        grads.append((float(value), tape.gradient(value, logits).numpy()))
    assert grads[1][0] == pytest.approx(grads[0][0], rel=1e-6)
    np.testing.assert_allclose(grads[1][1], grads[0][1], atol=1e-7)
    assert not grads[1][1][1, 1:].any()  # padded positions get no gradient


@pytest.mark.parametrize("reverse", [False, True])
def test_lstm_sequence_equals_a_python_loop_of_textbook_cells(reverse):
    """translator.model.lstm.lstm_sequence (the input projection before a tf.scan; rows
    reversed up to their lengths for the encoder's backward direction) against a plain
    Python loop of lstm_cell over x_t W_x + h_{t-1} W_h + b: the same states, and the same
    TensorFlow gradients for every input, with a loss that reads both the h and the c
    sequences (as the encoder does at each sentence's end)."""
    from translator.model.lstm import lstm_cell, lstm_sequence

    time, rows, inputs, units = 6, 3, 5, 4
    lengths = tf.constant([6, 2, 4]) if reverse else tf.fill([rows], time)
    rng = np.random.default_rng(0)

    def tensor(*shape):
        return tf.constant(rng.normal(size=shape).astype("float32"))

    args = [tensor(rows, time, inputs), tensor(rows, units), tensor(rows, units),
            0.5 * tensor(inputs, 4 * units), 0.5 * tensor(units, 4 * units),
            0.5 * tensor(4 * units)]
    read_h, read_c = tensor(rows, time, units), tensor(rows, time, units)

    def flip(x):  # each row's first `lengths` positions reversed
        return tf.reverse_sequence(x, lengths, seq_axis=1, batch_axis=0) if reverse else x

    def loop(x, h, c, kernel, recurrent_kernel, bias):
        x, hs, cs = flip(x), [], []
        for t in range(time):
            h, c = lstm_cell(x[:, t] @ kernel + h @ recurrent_kernel + bias, c)
            hs.append(h)
            cs.append(c)
        return flip(tf.stack(hs, 1)), flip(tf.stack(cs, 1))

    def sequence(x, h, c, kernel, recurrent_kernel, bias):
        return lstm_sequence(tf.einsum("bti,ig->btg", x, kernel) + bias, h, c,
                             recurrent_kernel, lengths, reverse)

    results = []
    for run in (loop, sequence):
        with tf.GradientTape() as tape:
            tape.watch(args)
            hs, cs = run(*args)
            loss = tf.reduce_sum(hs * read_h) + tf.reduce_sum(cs * read_c)
        results.append(([hs, cs], tape.gradient(loss, args)))
    for expected, got in zip(*(r[0] + r[1] for r in results)):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=2e-6)


def test_additive_attention_with_rows_equals_the_gathered_memory():
    """With rows, the attention reads the named stored sentences: the same as gathering
    them first."""
    from translator.model.layers import Attention

    rng = np.random.default_rng(4)
    layer = Attention("additive", 16, 16)
    memory = tf.constant(rng.normal(size=(3, 6, 16)).astype("float32"))
    mask = tf.constant([[True] * 6, [True] * 4 + [False] * 2, [True] * 2 + [False] * 4])
    keys, rows = layer.keys(memory), tf.constant([2, 1])
    query = tf.constant(rng.normal(size=(2 * 3, 1, 16)).astype("float32"))
    got = layer(query, keys, memory, mask, training=False, rows=rows)
    want = layer(query, *(tf.gather(x, rows) for x in (keys, memory, mask)), training=False)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_the_lstm_layer_equals_keras_lstm_with_the_same_weights(dtype):
    """translator.model.layers.LSTM computes what keras.layers.LSTM computes (the same
    equations, weights and gate order): every step's h and the final (h, c)."""
    from translator.model.layers import LSTM

    x = tf.constant(np.random.default_rng(8).normal(size=(3, 7, 5)).astype("float32"))
    ours = LSTM(6, dtype=dtype)
    outputs, (h, c) = ours(x)
    reference = keras.layers.LSTM(6, return_sequences=True, return_state=True, dtype=dtype)
    reference.build(x.shape)
    reference.set_weights(ours.get_weights())
    want_outputs, want_h, want_c = reference(x)
    atol = 1e-6 if dtype == "float32" else 3e-2
    for got, want in [(outputs, want_outputs), (h, want_h), (c, want_c)]:
        np.testing.assert_allclose(np.asarray(got, "float32"), np.asarray(want, "float32"),
                                   atol=atol)
