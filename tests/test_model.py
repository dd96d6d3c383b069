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


def test_keys_are_projected_once_per_sentence_in_the_state():
    model = make_model(attention="general")
    _, _, state = model.encode(batch()["source"])
    _, new_state, _ = model.decode_step(np.array([2, 2], "int32"), state)
    assert new_state["keys"] is state["keys"] and new_state["memory"] is state["memory"]


def test_step_weights_are_cast_once_and_passed_along_unchanged():
    model = make_model(dtype="mixed_bfloat16")
    _, _, state = model.encode(batch()["source"])
    _, new_state, _ = model.decode_step(np.array([2, 2], "int32"), state)
    assert new_state["weights"] is state["weights"]
    leaves = tf.nest.flatten(state["weights"])
    assert leaves and all(leaf.dtype == "bfloat16" for leaf in leaves)


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
    """The hand-written gradient (softmax - smoothed target) against TensorFlow's own
    gradient of the textbook formula, padding included (its gradient must be zero)."""
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
@pytest.mark.parametrize("sequence_op", [True, False])
def test_lstm_backward_pass_equals_autodiff_of_the_step_loop(sequence_op, reverse, monkeypatch):
    """The hand-written backward pass of translator.recurrence (the LstmSequence op where
    the kernels are available, else the tf.scan loops) against TensorFlow's own gradients
    of a plain Python loop of cells, for every input, with a loss that reads both the h
    and the c sequences (as the encoder does at each sentence's end); forwards, and
    reversed over rows of different lengths (the encoder's backward direction)."""
    from translator import native
    from translator.recurrence import lstm_cell, lstm_sequence

    if not sequence_op:
        monkeypatch.setattr(native, "lstm_sequence", lambda *args: None)
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


@pytest.mark.parametrize("input_feeding", [False, True])
def test_kernel_and_tf_ops_give_the_same_gradients(input_feeding, monkeypatch):
    """A training step's gradients through the compiled LSTM kernels (lstm_sequence's
    own backward; with input feeding, LstmCell's registered gradient inside the loop over
    decoder steps) equal those through TensorFlow's ops, in a traced function."""
    labels = np.array([[11, 12, 13, 3], [14, 3, 0, 0]], "int32")
    gradients = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("TRANSLATOR_NATIVE", flag)
        model = make_model(attention="general", input_feeding=input_feeding)
        loss_fn = MaskedCrossEntropy(label_smoothing=0.1)

        @tf.function
        def grads(inputs):
            with tf.GradientTape() as tape:
                loss = loss_fn(labels, model(inputs, training=True))
            return tape.gradient(loss, model.trainable_variables)

        gradients[flag] = [g.numpy() for g in grads(batch())]
    for with_kernels, with_ops in zip(gradients["1"], gradients["0"]):
        np.testing.assert_allclose(with_kernels, with_ops, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["dot", "general"])
def test_attention_outside_training_kernel_equals_tf_ops(kind, monkeypatch):
    """Outside training the attention runs on the compiled kernel where it is available
    (translator.native.grouped_attention); in float32 it agrees with TensorFlow's ops, for
    whole target sequences and for a beam's grouped queries, padding masked, and with
    rows naming the stored sentences each group reads."""
    from translator.layers import Attention

    rng = np.random.default_rng(3)
    layer = Attention(kind, 16, 16)
    memory = tf.constant(rng.normal(size=(3, 6, 16)).astype("float32"))
    mask = tf.constant([[True] * 6, [True] * 4 + [False] * 2, [True] * 2 + [False] * 4])
    keys = layer.keys(memory)
    cases = [((3, 5, 16), None), ((3 * 4, 1, 16), None),  # 5 target positions; a beam of 4
             ((2 * 4, 1, 16), tf.constant([2, 0]))]  # a beam of 4 over stored rows 2 and 0
    for query_shape, rows in cases:
        query = tf.constant(rng.normal(size=query_shape).astype("float32"))
        results = {}
        for flag in ("1", "0"):
            monkeypatch.setenv("TRANSLATOR_NATIVE", flag)
            results[flag] = layer(query, keys, memory, mask, training=False, rows=rows)
        for kernel_out, ops_out in zip(results["1"], results["0"]):
            np.testing.assert_allclose(kernel_out.numpy(), ops_out.numpy(), atol=1e-6)
        if rows is None:
            weights = results["1"][1].numpy().reshape(3, -1, 6)  # per sentence
            assert np.all(weights[2, :, 2:] == 0) and np.all(weights[1, :, 4:] == 0)


@pytest.mark.parametrize("tie_embeddings", [True, False])
@pytest.mark.parametrize("attention,input_feeding", [("general", False), ("additive", True)])
def test_search_packed_step_equals_the_plain_step(tie_embeddings, attention, input_feeding,
                                                  monkeypatch):
    """encode(search=True) packs the decoder's weights for the fused kernels (LstmStep,
    ProjectTopK); decode_step(projection=True) then gives the same LSTM states and, from
    its Projection, the same top tokens and log-normaliser as the plain step's logits
    (float32, within 1e-5), step after step, two decoder layers, tied or untied output."""
    from translator import native
    from translator.top_k import Projection, top_k_log_norm

    monkeypatch.setenv("TRANSLATOR_NATIVE", "1")
    monkeypatch.setenv("TRANSLATOR_FUSED_STEP", "1")  # whichever this machine would choose
    if native.library() is None:
        pytest.skip("the compiled kernels are not available")
    model = make_model(attention=attention, input_feeding=input_feeding,
                       tie_embeddings=tie_embeddings)
    inputs = batch()
    _, _, plain = model.encode(inputs["source"])
    _, _, packed = model.encode(inputs["source"], search=True)
    assert packed["weights"]["projection"] and all(
        len(w) == 3 for w in packed["weights"]["lstm"])
    for t in range(inputs["target_in"].shape[1]):
        tokens = inputs["target_in"][:, t]
        logits, plain, _ = model.decode_step(tokens, plain)
        projection, packed, _ = model.decode_step(tokens, packed, projection=True)
        assert isinstance(projection, Projection)
        want = top_k_log_norm(logits, 5)
        got = top_k_log_norm(projection, 5)
        np.testing.assert_array_equal(got[1].numpy(), want[1].numpy())
        for a, b in [(got[0], want[0]), (got[2], want[2])]:
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)
        for (h1, c1), (h2, c2) in zip(packed["lstm"], plain["lstm"]):
            np.testing.assert_allclose(h1.numpy(), h2.numpy(), atol=1e-5)
            np.testing.assert_allclose(c1.numpy(), c2.numpy(), atol=1e-5)


@pytest.mark.parametrize("native_on,fused", [("0", "auto"), ("1", "0")])
def test_search_packing_falls_back_to_logits_without_the_fused_step(monkeypatch, native_on,
                                                                    fused):
    """Without the kernels, or where the fused step does not pay, nothing is packed and
    decode_step(projection=True) returns the logits (in the compute dtype), which the
    searches read as before."""
    monkeypatch.setenv("TRANSLATOR_NATIVE", native_on)
    monkeypatch.setenv("TRANSLATOR_FUSED_STEP", fused)
    model = make_model()
    _, _, state = model.encode(batch()["source"], search=True)
    assert state["weights"]["projection"] == {}
    assert all(len(w) == 2 for w in state["weights"]["lstm"])
    logits, _, _ = model.decode_step(np.array([2, 2], "int32"), state, projection=True)
    assert tuple(logits.shape) == (2, VOCAB)


def test_additive_attention_with_rows_equals_the_gathered_memory():
    """Additive attention has no kernel: with rows it gathers the stored sentences first."""
    from translator.layers import Attention

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
