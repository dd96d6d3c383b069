"""Keras 3 layers of the translator: encoder, bridge and attention.

Masks are passed explicitly as boolean tensors (True at real tokens), computed
from the ids (pad id 0), so nothing depends on Keras' implicit mask propagation.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers, ops

from translator import native
from translator.recurrence import lstm_cell, lstm_sequence

NEG_INF = -1e9  # added to attention scores at padded source positions


class ForgetBias(keras.initializers.Initializer):
    """LSTM bias: zeros, except ones for the forget gate (it starts by remembering)."""

    def __call__(self, shape, dtype=None):
        units = shape[0] // 4
        return ops.concatenate([ops.zeros((units,), dtype), ops.ones((units,), dtype),
                                ops.zeros((2 * units,), dtype)])


@keras.saving.register_keras_serializable(package="translator")
class Dropout(layers.Dropout):
    """keras.layers.Dropout whose mask, where the compiled kernels are available, comes
    from SeededDropout (translator.native: one pass, 6x TensorFlow's stateless dropout;
    about 4% of a training step), seeded by the layer's own seed generator as Keras' is.
    Without the kernels, or with a noise_shape, Keras' dropout."""

    def call(self, inputs, training=False):
        if training and self.rate > 0 and self.noise_shape is None:
            fast = native.dropout(inputs, self.rate, self.seed_generator.next())
            if fast is not None:
                return fast
        return super().call(inputs, training=training)


@keras.saving.register_keras_serializable(package="translator")
class LSTM(layers.Layer):
    """An LSTM layer with two entry points over the same weights:

    call(inputs [batch, time, in], initial_state=None, lengths=None, reverse=False) runs
    whole sequences (translator.recurrence: input projection for all steps at once,
    hand-written backward pass) and returns outputs [batch, time, units] and the state
    (h, c) where each sequence ends (after its last real token: at lengths - 1, or the last
    step without lengths). reverse runs each sequence from its last real token to its
    first, outputs at their positions (the backward direction of the encoder). Outputs
    past a sequence's end are not zeroed: callers mask them.
    step(inputs [batch, in], (h, c)) is one step, for search and input feeding.
    h is in the compute dtype, c always float32 (see translator.recurrence).

    Gates and weights are laid out as in Keras' LSTMCell (kernel, recurrent_kernel, bias;
    glorot-uniform, orthogonal, forget-gate bias 1).
    """

    def __init__(self, units: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape) -> None:
        self.kernel = self.add_weight(shape=(input_shape[-1], 4 * self.units), name="kernel",
                                      initializer="glorot_uniform")
        self.recurrent_kernel = self.add_weight(shape=(self.units, 4 * self.units),
                                                name="recurrent_kernel", initializer="orthogonal")
        self.bias = self.add_weight(shape=(4 * self.units,), name="bias", initializer=ForgetBias())

    def _weights(self):
        dtype = self.compute_dtype
        return (ops.cast(self.kernel, dtype), ops.cast(self.recurrent_kernel, dtype),
                ops.cast(self.bias, dtype))

    def call(self, inputs, initial_state=None, lengths=None, reverse=False, training=None):
        kernel, recurrent_kernel, bias = self._weights()
        inputs = ops.cast(inputs, self.compute_dtype)
        # one 2-D matmul with its bias: TensorFlow fuses MatMul + BiasAdd into one pass (a
        # separate bfloat16 add over [batch, time, 4 * units] cost as much as a third of
        # the matmul; decoding 1.03x)
        steps = tf.shape(inputs)[:2]
        flat = tf.reshape(inputs, [-1, inputs.shape[-1]])
        projected = tf.reshape(tf.nn.bias_add(tf.matmul(flat, kernel), bias),
                               tf.concat([steps, [4 * self.units]], 0))
        if initial_state is None:
            zeros = ops.zeros((steps[0], self.units), self.compute_dtype)
            initial_state = (zeros, zeros)
        if lengths is None:
            lengths = tf.fill(steps[:1], steps[1])
        hs, cs = lstm_sequence(projected, *initial_state, recurrent_kernel, lengths, reverse,
                               save=training is not False)
        # each row's state after its last real token: at position 0 when it ran reversed
        last = tf.zeros_like(lengths) if reverse else lengths - 1
        ends = tf.stack([tf.range(steps[0]), last], 1)
        return hs, (tf.gather_nd(hs, ends), tf.gather_nd(cs, ends))

    def step_weights(self, packed=False):
        """(kernel stacked over recurrent_kernel [in + units, 4*units], bias), in the compute
        dtype: what `step` reads. A search computes it once, not once per step. With
        packed (searches), where the fused step runs (translator.native.fused_step), a
        third item: the stacked kernel packed for LstmStep (translator.native.lstm_step)
        and the bias in float32."""
        kernel, recurrent_kernel, bias = self._weights()
        stacked = ops.concatenate([kernel, recurrent_kernel], 0)
        fused = native.pack_for_search(stacked, "gates") if packed else None
        if fused is None:
            return stacked, bias
        return stacked, bias, (fused, ops.cast(self.bias, "float32"))

    def step(self, inputs, state, weights=None, training=False):
        """inputs [batch, in], state (h, c) -> (h, c); one matmul over [inputs, h], or
        outside training with packed weights (step_weights(packed=True)) one LstmStep op:
        the product and the cell together, the gates never written out."""
        stacked, bias, *fused = self.step_weights() if weights is None else weights
        h, c = state
        if fused and not training:
            return native.lstm_step(ops.cast(inputs, h.dtype), h, c, *fused[0])
        z = ops.matmul(ops.concatenate([inputs, h], -1), stacked) + bias
        return lstm_cell(z, c, save=bool(training))

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
        forward, (h_fw, c_fw) = self.forward_lstm(embedded, lengths=lengths)
        backward, (h_bw, c_bw) = self.backward_lstm(embedded, lengths=lengths, reverse=True)
        memory = ops.concatenate([forward, backward], -1)
        for lstm in self.stack:
            memory = memory + lstm(self.dropout(memory, training=training))[0]
        memory = self.dropout(memory, training=training)
        return memory, ops.concatenate([h_fw, h_bw], -1), ops.concatenate([c_fw, c_bw], -1)

    def get_config(self) -> dict:
        return {**super().get_config(), "units": self.units, "num_layers": self.num_layers,
                "dropout": self.dropout_rate}


@keras.saving.register_keras_serializable(package="translator")
class Bridge(layers.Layer):
    """Maps the encoder's final (h, c) [batch, enc] to each decoder layer's initial (h, c).

    Returns a list of num_layers pairs (h, c), each [batch, units]; c in float32, as the
    LSTMs carry it (see translator.recurrence).
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
    """Luong `dot` / `general` or Bahdanau `additive` attention over the encoder memory.

    `keys(memory)` projects the memory once per sentence; `call(query, keys, memory, mask)`
    then scores any number of decoder positions at once:
    query [batch, tgt_len, dec], keys [batch, src_len, k], memory [batch, src_len, mem],
    mask [batch, src_len] -> context [batch, tgt_len, mem], weights [batch, tgt_len, src_len].
    keys, memory and mask may instead have batch / g rows, each read by g consecutive
    query rows (see call), or hold more sentences than that, with `rows` [batch / g]
    naming the one each group reads (a search's sentences still being searched).
    """

    KINDS = ("dot", "general", "additive")

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

    def keys(self, memory):
        """memory [batch, src_len, mem] -> keys [batch, src_len, k]; computed once per sentence."""
        return memory if self.kind == "dot" else self.key_proj(memory)

    def call(self, query, keys, memory, mask=None, training=None, rows=None):
        # The memory may hold one row per group of query rows (a beam search's hypotheses
        # of one sentence: query rows b * k .. b * k + k - 1 read memory row b); the
        # group's queries are then scored together, one matmul per sentence, and the
        # memory is never copied per hypothesis. With rows, group b reads memory row
        # rows[b] (a search's memory keeps the sentences that are done: no copy per step).
        queries, length = ops.shape(query)[0], ops.shape(query)[1]
        if not training and self.kind != "additive" and mask is not None:
            # outside training (no gradient needed): the compiled kernel, every sentence's
            # keys and memory read once for all its queries (translator.native)
            fast = native.grouped_attention(
                ops.reshape(query, (-1, query.shape[-1])), keys, memory, mask, rows)
            if fast is not None:
                return (ops.reshape(fast[0], (queries, length, memory.shape[-1])),
                        ops.reshape(fast[1], (queries, length, ops.shape(keys)[1])))
        if rows is not None:
            keys, memory = tf.gather(keys, rows), tf.gather(memory, rows)
            mask = None if mask is None else tf.gather(mask, rows)
        query = ops.reshape(query, (ops.shape(keys)[0], -1, query.shape[-1]))
        if self.kind == "additive":
            hidden = ops.tanh(ops.expand_dims(keys, 1) + ops.expand_dims(self.query_proj(query), 2))
            scores = ops.squeeze(self.score(hidden), -1)
        else:
            scores = ops.matmul(query, ops.transpose(keys, (0, 2, 1)))
        if mask is not None:
            scores = ops.where(ops.expand_dims(mask, 1), scores, ops.cast(NEG_INF, scores.dtype))
        weights = ops.softmax(scores, axis=-1)
        context = ops.matmul(weights, memory)
        return (ops.reshape(context, (queries, length, memory.shape[-1])),
                ops.reshape(weights, (queries, length, ops.shape(keys)[1])))

    def get_config(self) -> dict:
        return {**super().get_config(), "kind": self.kind, "query_dim": self.query_dim,
                "memory_dim": self.memory_dim}
