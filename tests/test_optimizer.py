"""FusedAdam (translator.train.optimizer) against Keras' own Adam."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from translator.train.optimizer import FusedAdam


def _run(optimizer, gradients, learning_rates):
    """Applies the gradient sequences to fresh variables -> (variables, optimizer)."""
    rng = np.random.default_rng(0)
    variables = [keras.Variable(rng.normal(size=g[0].shape).astype("float32"))
                 for g in gradients]
    optimizer.build(variables)
    for step, lr in enumerate(learning_rates):
        optimizer.learning_rate.assign(lr)
        optimizer.apply([g[step] for g in gradients], variables)
    return [v.numpy() for v in variables], optimizer


@pytest.mark.parametrize("clipnorm", [None, 0.5])
def test_fused_adam_follows_keras_adam_step_for_step(clipnorm):
    rng = np.random.default_rng(1)
    shapes = [(300, 17), (17,), (5, 8, 3)]
    steps = 6
    # gradients of very different sizes, so that the clipping and epsilon both matter
    gradients = [[tf.constant(rng.normal(scale=10.0 ** (k - 3), size=s).astype("float32"))
                  for k in range(steps)] for s in shapes]
    learning_rates = [1e-3, 1e-3, 5e-4, 5e-4, 1e-2, 1e-3]  # a schedule changing it
    want, keras_adam = _run(keras.optimizers.Adam(1e-3, clipnorm=clipnorm), gradients,
                            learning_rates)
    got, fused = _run(FusedAdam(1e-3, clipnorm=clipnorm), gradients, learning_rates)
    for w, g in zip(want, got):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)
    assert int(fused.iterations.numpy()) == int(keras_adam.iterations.numpy()) == steps
    # the moments differ by rounding: TensorFlow forms 1 - beta_2 in float32 (4.7e-5 off
    # 0.001), Keras in float64
    for a, b in zip(keras_adam.variables, fused.variables):
        scale = float(np.abs(a.numpy()).max())
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-6 * scale)


def test_fused_adam_moves_weights_under_tf_function():
    """As Keras traces it in training: the fused op inside a compiled train function."""
    variable = keras.Variable(np.ones((4, 4), "float32"))
    optimizer = FusedAdam(0.1)
    optimizer.build([variable])

    @tf.function
    def step(gradient):
        optimizer.apply([gradient], [variable])

    for _ in range(3):
        step(tf.ones((4, 4)))
    # Adam's first steps move each weight by about the learning rate
    np.testing.assert_allclose(variable.numpy(), 1.0 - 0.3, atol=1e-4)


def test_sparse_gradients_take_keras_update():
    rows = tf.IndexedSlices(tf.ones((2, 3)), tf.constant([0, 2]), tf.constant([4, 3]))
    dense = tf.convert_to_tensor(rows)
    want, _ = _run(keras.optimizers.Adam(0.01), [[dense, dense]], [0.01, 0.01])
    got, _ = _run(FusedAdam(0.01), [[rows, rows]], [0.01, 0.01])
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)


def test_config_round_trip():
    optimizer = FusedAdam(2e-3, beta_2=0.98, clipnorm=1.0)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(optimizer))
    assert type(again) is FusedAdam
    assert again.get_config() == optimizer.get_config()
