"""Keras 3 layers of the translator: encoder, bridge and attention.

Masks are passed explicitly as boolean tensors (True at real tokens), computed
from the ids (pad id 0), so nothing depends on Keras' implicit mask propagation.
"""

from __future__ import annotations

import keras
from keras import layers, ops

NEG_INF = -1e9  # added to attention scores at padded source positions


@keras.saving.register_keras_serializable(package="translator")
class Encoder(layers.Layer):
    """Stacked LSTM encoder; the first layer is bidirectional, later ones residual.

    call(embedded [batch, src_len, emb], mask [batch, src_len]) returns
    memory [batch, src_len, 2*units] and the final states (h, c), each [batch, 2*units]
    (forward and backward final states concatenated; later layers' states are not used).
    """

    def __init__(self, units: int, num_layers: int = 1, dropout: float = 0.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.units, self.num_layers, self.dropout_rate = units, num_layers, dropout
        dtype = self.dtype_policy
        self.bidirectional = layers.Bidirectional(
            layers.LSTM(units, return_sequences=True, return_state=True, dtype=dtype),
            name="bilstm", dtype=dtype,
        )
        self.stack = [
            layers.LSTM(2 * units, return_sequences=True, name=f"lstm_{i + 1}", dtype=dtype)
            for i in range(num_layers - 1)
        ]
        self.dropout = layers.Dropout(dropout, dtype=dtype)
        self.supports_masking = True  # the mask is consumed here, not passed on

    def compute_mask(self, inputs, mask=None):
        return None

    def call(self, embedded, mask=None, training=None):
        memory, h_fw, c_fw, h_bw, c_bw = self.bidirectional(embedded, mask=mask, training=training)
        for lstm in self.stack:
            memory = memory + lstm(self.dropout(memory, training=training), mask=mask)
        memory = self.dropout(memory, training=training)
        return memory, ops.concatenate([h_fw, h_bw], -1), ops.concatenate([c_fw, c_bw], -1)

    def get_config(self) -> dict:
        return {**super().get_config(), "units": self.units, "num_layers": self.num_layers,
                "dropout": self.dropout_rate}


@keras.saving.register_keras_serializable(package="translator")
class Bridge(layers.Layer):
    """Maps the encoder's final (h, c) [batch, enc] to each decoder layer's initial (h, c).

    Returns a list of num_layers pairs (h, c), each [batch, units].
    """

    def __init__(self, units: int, num_layers: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.units, self.num_layers = units, num_layers
        self.to_h = layers.Dense(units * num_layers, activation="tanh", name="to_h",
                                 dtype=self.dtype_policy)
        self.to_c = layers.Dense(units * num_layers, name="to_c", dtype=self.dtype_policy)

    def call(self, h, c):
        hs = ops.split(self.to_h(h), self.num_layers, axis=-1)
        cs = ops.split(self.to_c(c), self.num_layers, axis=-1)
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

    def call(self, query, keys, memory, mask=None):
        if self.kind == "additive":
            hidden = ops.tanh(ops.expand_dims(keys, 1) + ops.expand_dims(self.query_proj(query), 2))
            scores = ops.squeeze(self.score(hidden), -1)
        else:
            scores = ops.matmul(query, ops.transpose(keys, (0, 2, 1)))
        if mask is not None:
            scores = ops.where(ops.expand_dims(mask, 1), scores, ops.cast(NEG_INF, scores.dtype))
        weights = ops.softmax(scores, axis=-1)
        return ops.matmul(weights, memory), weights

    def get_config(self) -> dict:
        return {**super().get_config(), "kind": self.kind, "query_dim": self.query_dim,
                "memory_dim": self.memory_dim}
