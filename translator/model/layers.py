"""Keras 3 layers of the translator: the LSTM, the encoder, the bridge and attention.

Each layer keeps its weights and calls the model's operations (translator.model.operations:
the plain TensorFlow path unless the model was given the compiled kernels) for the
computation itself. Masks are passed explicitly as boolean tensors (True at real tokens),
computed from the ids (pad id 0), so nothing depends on Keras' implicit mask propagation.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers, ops

from translator.model.attention import dot_scores
from translator.model.operations import PLAIN


class ForgetBias(keras.initializers.Initializer):
    """LSTM bias: zeros, except ones for the forget gate (it starts by remembering)."""

    def __call__(self, shape, dtype=None):
        units = shape[0] // 4
        return ops.concatenate([ops.zeros((units,), dtype), ops.ones((units,), dtype),
                                ops.zeros((2 * units,), dtype)])


@keras.saving.register_keras_serializable(package="translator")
class Dropout(layers.Dropout):
    """keras.layers.Dropout through the model's operations (the kernels draw the mask in
    one pass); with a noise_shape, Keras' own."""

    operations = PLAIN  # Seq2Seq.use_operations sets the model's

    def call(self, inputs, training=False):
        if training and self.rate > 0 and self.noise_shape is None:
            return self.operations.dropout(inputs, self.rate, self.seed_generator)
        return super().call(inputs, training=training)


@keras.saving.register_keras_serializable(package="translator")
class LSTM(layers.Layer):
    """An LSTM layer (translator.model.lstm) with two entry points over the same weights:

    call(inputs [batch, time, in], initial_state=None, lengths=None, reverse=False) runs
    whole sequences and returns outputs [batch, time, units] and the state (h, c) where
    each sequence ends (after its last real token: at lengths - 1, or the last step
    without lengths). reverse runs each sequence from its last real token to its first,
    outputs at their positions (the backward direction of the encoder). Outputs past a
    sequence's end are not zeroed: callers mask them.
    step(inputs [batch, in], (h, c), weights) is one step, for search and input feeding.
    h is in the compute dtype, c always float32.

    Weights as in Keras' LSTMCell: kernel W_x [in, 4 * units], recurrent_kernel W_h
    [units, 4 * units], bias [4 * units] (glorot-uniform, orthogonal, forget-gate bias 1).
    """

    operations = PLAIN

    def __init__(self, units: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape) -> None:
        self.kernel = self.add_weight(shape=(input_shape[-1], 4 * self.units), name="kernel",
                                      initializer="glorot_uniform")
        self.recurrent_kernel = self.add_weight(shape=(self.units, 4 * self.units),
                                                name="recurrent_kernel", initializer="orthogonal")
        self.bias = self.add_weight(shape=(4 * self.units,), name="bias", initializer=ForgetBias())

    def call(self, inputs, initial_state=None, lengths=None, reverse=False, training=None):
        dtype = self.compute_dtype
        inputs = ops.cast(inputs, dtype)
        steps = tf.shape(inputs)[:2]
        # x_t W_x + b for all time steps at once: one large matmul before the recurrence
        flat = tf.reshape(inputs, [-1, inputs.shape[-1]])
        xw = tf.nn.bias_add(tf.matmul(flat, ops.cast(self.kernel, dtype)),
                            ops.cast(self.bias, dtype))
        xw = tf.reshape(xw, tf.concat([steps, [4 * self.units]], 0))
        if initial_state is None:
            zeros = ops.zeros((steps[0], self.units), dtype)
            initial_state = (zeros, zeros)
        if lengths is None:
            lengths = tf.fill(steps[:1], steps[1])
        hs, cs = self.operations.lstm_sequence(xw, *initial_state,
                                               ops.cast(self.recurrent_kernel, dtype), lengths,
                                               reverse, training)
        # each row's state after its last real token: at position 0 when it ran reversed
        last = tf.zeros_like(lengths) if reverse else lengths - 1
        ends = tf.stack([tf.range(steps[0]), last], 1)
        return hs, (tf.gather_nd(hs, ends), tf.gather_nd(cs, ends))

    def step_weights(self, for_search=False):
        """The weights `step` reads, in the compute dtype and prepared by the model's
        operations: a search computes them once, not once per step."""
        dtype = self.compute_dtype
        return self.operations.lstm_step_weights(ops.cast(self.kernel, dtype),
                                                 ops.cast(self.recurrent_kernel, dtype),
                                                 self.bias, for_search)

    def step(self, inputs, state, weights=None, training=False):
        """inputs [batch, in], state (h, c) -> (h_t, c_t), each [batch, units]."""
        h, c = state
        weights = self.step_weights() if weights is None else weights
        return self.operations.lstm_step(ops.cast(inputs, h.dtype), h, c, weights, training)

    def get_config(self) -> dict:
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="translator")
class Encoder(layers.Layer):
    """Stacked LSTM encoder; the first layer is bidirectional, later ones residual.

    call(embedded [batch, src_len, emb], mask [batch, src_len]) returns
    memory [batch, src_len, 2*units] and the final states (h, c), each [batch, 2*units]
    (forward and backward final states concatenated; later layers' states are not used).
    Sequences are right-padded: the backward direction reads each sentence from its own
    last token to its first (LSTM.call's reverse), so neither direction ever steps over
    padding before a real token. Memory at padded positions is masked by the attention.
    """

    def __init__(self, units: int, num_layers: int = 1, dropout: float = 0.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.units, self.num_layers, self.dropout_rate = units, num_layers, dropout
        dtype = self.dtype_policy
        self.forward_lstm = LSTM(units, name="forward_lstm", dtype=dtype)
        self.backward_lstm = LSTM(units, name="backward_lstm", dtype=dtype)
        self.stack = [LSTM(2 * units, name=f"lstm_{i + 1}", dtype=dtype)
                      for i in range(num_layers - 1)]
        self.dropout = Dropout(dropout, dtype=dtype)
        self.supports_masking = True  # the mask is consumed here, not passed on

    def compute_mask(self, inputs, mask=None):
        return None

    def call(self, embedded, mask=None, training=None):
        if mask is None:
            lengths = ops.shape(embedded)[1] * ops.ones((ops.shape(embedded)[0],), "int32")
        else:
            lengths = ops.sum(ops.cast(mask, "int32"), axis=1)
        forward, (h_fw, c_fw) = self.forward_lstm(embedded, lengths=lengths, training=training)
        backward, (h_bw, c_bw) = self.backward_lstm(embedded, lengths=lengths, reverse=True,
                                                    training=training)
        memory = ops.concatenate([forward, backward], -1)
        for lstm in self.stack:
            memory = memory + lstm(self.dropout(memory, training=training),
                                   training=training)[0]
        memory = self.dropout(memory, training=training)
        return memory, ops.concatenate([h_fw, h_bw], -1), ops.concatenate([c_fw, c_bw], -1)

    def get_config(self) -> dict:
        return {**super().get_config(), "units": self.units, "num_layers": self.num_layers,
                "dropout": self.dropout_rate}


@keras.saving.register_keras_serializable(package="translator")
class Bridge(layers.Layer):
    """Maps the encoder's final (h, c) [batch, enc] to each decoder layer's initial (h, c).

    Returns a list of num_layers pairs (h, c), each [batch, units]; c in float32, as the
    LSTMs carry it.
    """

    def __init__(self, units: int, num_layers: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.units, self.num_layers = units, num_layers
        self.to_h = layers.Dense(units * num_layers, activation="tanh", name="to_h",
                                 dtype=self.dtype_policy)
        self.to_c = layers.Dense(units * num_layers, name="to_c", dtype=self.dtype_policy)

    def call(self, h, c):
        hs = ops.split(self.to_h(h), self.num_layers, axis=-1)
        cs = ops.split(ops.cast(self.to_c(c), "float32"), self.num_layers, axis=-1)
        return [(hs[i], cs[i]) for i in range(self.num_layers)]

    def get_config(self) -> dict:
        return {**super().get_config(), "units": self.units, "num_layers": self.num_layers}


@keras.saving.register_keras_serializable(package="translator")
class Attention(layers.Layer):
    """Luong `dot` / `general` or Bahdanau `additive` attention over the encoder memory
    (translator.model.attention).

    `keys(memory)` projects the memory once per sentence; `call(query, keys, memory, mask)`
    then scores any number of decoder positions at once:
    query [batch, tgt_len, dec], keys [batch, src_len, k], memory [batch, src_len, mem],
    mask [batch, src_len] -> context [batch, tgt_len, mem], weights [batch, tgt_len, src_len].
    keys, memory and mask may instead have batch / g rows, each read by g consecutive
    query rows (a beam's hypotheses of one sentence), or hold more sentences than that,
    with `rows` [batch / g] naming the one each group reads (a search's sentences still
    being searched).
    """

    KINDS = ("dot", "general", "additive")
    operations = PLAIN

    def __init__(self, kind: str, query_dim: int, memory_dim: int, **kwargs) -> None:
        super().__init__(**kwargs)
        if kind not in self.KINDS:
            raise ValueError(f"attention must be one of {', '.join(self.KINDS)}, not {kind!r}")
        if kind == "dot" and query_dim != memory_dim:
            raise ValueError(f"dot attention needs decoder units ({query_dim}) equal to the "
                             f"encoder memory size ({memory_dim}); use general or additive")
        self.kind, self.query_dim, self.memory_dim = kind, query_dim, memory_dim
        dtype = self.dtype_policy
        if kind in ("general", "additive"):
            self.key_proj = layers.Dense(query_dim, use_bias=False, name="key_proj", dtype=dtype)
        if kind == "additive":
            self.query_proj = layers.Dense(query_dim, name="query_proj", dtype=dtype)
            self.score = layers.Dense(1, use_bias=False, name="score", dtype=dtype)

    @property
    def dot_product(self) -> bool:
        """Whether the scores are dot products of the query with the keys."""
        return self.kind != "additive"

    def keys(self, memory):
        """memory [batch, src_len, mem] -> keys [batch, src_len, k]; computed once per sentence."""
        return memory if self.kind == "dot" else self.key_proj(memory)

    def additive_scores(self, query, keys):
        """query [batch, T, dec], keys [batch, S, k] -> [batch, T, S]:
        v . tanh(k_s + W_q q_t + b)."""
        hidden = ops.tanh(ops.expand_dims(keys, 1) + ops.expand_dims(self.query_proj(query), 2))
        return ops.squeeze(self.score(hidden), -1)

    def scores(self, query, keys):
        """query [batch, T, dec], keys [batch, S, k] -> scores [batch, T, S]."""
        return dot_scores(query, keys) if self.dot_product else self.additive_scores(query, keys)

    def call(self, query, keys, memory, mask=None, training=None, rows=None):
        return self.operations.attention(query, keys, memory, mask, rows, self, training)

    def get_config(self) -> dict:
        return {**super().get_config(), "kind": self.kind, "query_dim": self.query_dim,
                "memory_dim": self.memory_dim}
