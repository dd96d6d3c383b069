"""The sequence-to-sequence model: BiLSTM encoder, LSTM decoder, Luong-style attention.

Training runs whole target sequences through sequence-level LSTM layers and scores
attention for every target position at once (attention after the decoder LSTM).
With `input_feeding=True` the previous attentional vector is fed into the next
step, which forces a step-by-step loop (`tf.scan`) in training as well.

For search the model exposes `encode()` and `decode_step()`; `decode_step` uses
the very weights of the sequence layers (their `step`), so teacher-forced logits and
step-by-step logits agree.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers, ops

from translator import native
from translator.layers import LSTM, Attention, Bridge, Dropout, Encoder
from translator.tokenizer import PAD_ID
from translator.top_k import Projection

STATIC_KEYS = ("memory", "keys", "mask")  # per-sentence decoder state, fixed during search
SHARED_KEYS = ("weights",)  # decoder state shared by every sentence (never tiled or reordered)


@keras.saving.register_keras_serializable(package="translator")
class Seq2Seq(keras.Model):
    """Input: {"source": int [batch, src_len], "target_in": int [batch, tgt_len]}.

    Output: logits [batch, tgt_len, tgt_vocab] for the next target token at every position,
    in the compute dtype (bfloat16 under mixed precision; MaskedCrossEntropy computes in
    float32 whatever it reads).
    """

    def __init__(
        self,
        src_vocab_size: int,
        tgt_vocab_size: int,
        embedding_dim: int = 256,
        encoder_units: int = 256,
        encoder_layers: int = 1,
        decoder_units: int = 512,
        decoder_layers: int = 1,
        attention: str = "general",
        input_feeding: bool = False,
        dropout: float = 0.3,
        tie_embeddings: bool = True,
        share_embeddings: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if share_embeddings and src_vocab_size != tgt_vocab_size:
            raise ValueError("share_embeddings needs one joint vocabulary "
                             f"(source {src_vocab_size}, target {tgt_vocab_size})")
        self.settings = dict(
            src_vocab_size=src_vocab_size, tgt_vocab_size=tgt_vocab_size,
            embedding_dim=embedding_dim, encoder_units=encoder_units,
            encoder_layers=encoder_layers, decoder_units=decoder_units,
            decoder_layers=decoder_layers, attention=attention, input_feeding=input_feeding,
            dropout=dropout, tie_embeddings=tie_embeddings, share_embeddings=share_embeddings,
        )
        self.input_feeding, self.tie_embeddings = input_feeding, tie_embeddings
        dtype = self.dtype_policy  # sublayers share it: float32, or mixed_bfloat16 (see training)
        # Embeddings start at N(0, 1/d) and are scaled by sqrt(d) where they enter the
        # network: inputs of unit scale (Keras' default U(-0.05, 0.05) starves the LSTMs
        # and learning crawls), while tied output logits start small.
        self.embed_scale = float(embedding_dim) ** 0.5
        init = keras.initializers.RandomNormal(stddev=1.0 / self.embed_scale)
        self.tgt_embedding = layers.Embedding(tgt_vocab_size, embedding_dim, name="tgt_embedding",
                                              embeddings_initializer=init, dtype=dtype)
        self.src_embedding = (
            self.tgt_embedding if share_embeddings else
            layers.Embedding(src_vocab_size, embedding_dim, name="src_embedding",
                             embeddings_initializer=init, dtype=dtype))
        self.tgt_embedding.build()  # step_weights() reads the table before any call
        self.encoder = Encoder(encoder_units, encoder_layers, dropout, name="encoder", dtype=dtype)
        self.bridge = Bridge(decoder_units, decoder_layers, name="bridge", dtype=dtype)
        attentional_dim = embedding_dim if tie_embeddings else decoder_units
        self.decoder_lstms = [LSTM(decoder_units, name=f"decoder_lstm_{i}", dtype=dtype)
                              for i in range(decoder_layers)]
        first_input = embedding_dim + (attentional_dim if input_feeding else 0)
        for i, lstm in enumerate(self.decoder_lstms):  # built here: with input feeding,
            lstm.build((None, first_input if i == 0 else decoder_units))  # only step() runs
        self.attention = Attention(attention, decoder_units, 2 * encoder_units, name="attention",
                                   dtype=dtype)
        self.attentional = layers.Dense(attentional_dim, activation="tanh", name="attentional",
                                        dtype=dtype)
        self.attentional.build((None, 2 * encoder_units + decoder_units))  # see _attend
        self.dropout = Dropout(dropout, dtype=dtype)
        if not tie_embeddings:
            self.output_proj = layers.Dense(tgt_vocab_size, name="output_proj", dtype=dtype)
        else:
            self.output_bias = self.add_weight(
                shape=(tgt_vocab_size,), initializer="zeros", name="output_bias")

    # ---- training graph -------------------------------------------------------------

    def call(self, inputs, training=None):
        source, target_in = inputs["source"], inputs["target_in"]
        memory, mask, state = self.encode(source, training=training)
        embedded = self.dropout(self.tgt_embedding(target_in) * self.embed_scale,
                                training=training)
        if self.input_feeding:
            attentional = self._feed_loop(embedded, state, training)
        else:
            hidden = embedded
            for lstm, (h, c) in zip(self.decoder_lstms, state["lstm"]):
                hidden = lstm(hidden, initial_state=(h, c), training=training)[0]
                hidden = self.dropout(hidden, training=training)
            attentional, _ = self._attend(hidden, state, training)
        # in the compute dtype: the loss reads bfloat16 logits as they are and computes in
        # float32 (a cast would be a pass over [batch, tgt_len, vocab] each way and add no
        # precision: the matmul's output is already rounded to bfloat16)
        return self.logits(self.dropout(attentional, training=training), float32=False)

    def _feed_loop(self, embedded, state, training):
        """Input feeding over time: embedded [batch, tgt_len, emb] -> [batch, tgt_len, att].

        tf.scan rather than keras.ops.scan: the latter mis-infers its outputs' structure
        when the carry holds several tensors (Keras 3.15, TensorFlow backend).
        """
        init = {k: state[k] for k in ("lstm", "feed")}  # weights: cast once, outside the loop

        def step(carry, x):
            _, new_state, _ = self._step(x, {**state, **carry}, training)
            return {k: new_state[k] for k in init}

        carries = tf.scan(step, ops.transpose(embedded, (1, 0, 2)), initializer=init)
        return ops.transpose(carries["feed"], (1, 0, 2))

    def logits(self, attentional, table=None, float32=True):
        """attentional [..., att] -> logits [..., tgt_vocab], float32 (even when the model
        computes in bfloat16, so that softmax and loss keep full precision) unless float32
        is False. table: the tied output table from output_table(), e.g. cast once by
        step_weights."""
        dtype = "float32" if float32 else self.compute_dtype
        if not self.tie_embeddings:
            return ops.cast(self.output_proj(attentional), dtype)
        if table is None:
            table = self.output_table()
        # One 2-D matmul against the [vocab, att + 2] table itself: its gradient comes out
        # in the table's layout (no transpose of a vocabulary-sized matrix), and two
        # columns of ones add the bias inside the matmul, in float32 accumulation: no
        # separate pass over the vocabulary-wide logits to add it (beam search 1.06x).
        flat = tf.reshape(attentional, [-1, ops.shape(attentional)[-1]])
        flat = tf.concat([flat, tf.ones([tf.shape(flat)[0], 2], flat.dtype)], 1)
        logits = tf.matmul(flat, table, transpose_b=True)
        logits = tf.reshape(logits, tf.concat([tf.shape(attentional)[:-1], [-1]], 0))
        logits.set_shape(attentional.shape[:-1].concatenate(table.shape[:1]))
        return ops.cast(logits, dtype)

    def output_table(self):
        """The tied output projection [tgt_vocab, att + 2] in the compute dtype: the target
        embeddings, then the output bias split in two columns, high and low part (in
        bfloat16 the two keep the float32 bias to about 16 bits; in float32 the low part
        is zero)."""
        dtype = self.compute_dtype
        bias = ops.cast(self.output_bias, "float32")
        high = ops.cast(bias, dtype)
        low = ops.cast(bias - ops.cast(high, "float32"), dtype)
        return ops.concatenate([ops.cast(self.tgt_embedding.embeddings, dtype),
                                high[:, None], low[:, None]], 1)

    def _attend(self, hidden, state, training=None):
        """hidden [batch, T, dec] -> attentional [batch, T, att], weights [batch, T, src_len]."""
        context, weights = self.attention(hidden, state["keys"], state["memory"], state["mask"],
                                          training=training, rows=state.get("sentence_rows"))
        kernel, bias = state["weights"]["attentional"]
        return ops.tanh(ops.matmul(ops.concatenate([context, hidden], -1), kernel) + bias), weights

    def step_weights(self, search=False) -> dict:
        """The weights the decoder reads at every step, in the compute dtype. `encode` puts
        them in the decoder state, so a search casts them once, not once per step (under
        mixed precision each cast of the embedding table alone cost 0.4 ms per step).
        search=True adds them packed for the searches' fused kernels (the decoder LSTMs'
        LstmStep, the output projection's ProjectTopK), where the searches run the fused
        step (translator.native.fused_step)."""
        dtype = self.compute_dtype
        weights = {
            "embedding": ops.cast(self.tgt_embedding.embeddings, dtype),
            "lstm": [lstm.step_weights(packed=search) for lstm in self.decoder_lstms],
            "attentional": (ops.cast(self.attentional.kernel, dtype),
                            ops.cast(self.attentional.bias, dtype)),
        }
        if search:
            weights["projection"] = self.packed_output()
        if self.tie_embeddings and not weights.get("projection"):  # else not read
            weights["output"] = self.output_table()
        return weights

    def packed_output(self) -> dict:
        """The output projection for the searches' fused kernel (translator.top_k.Projection):
        {"packed": its weights packed by translator.native.pack_for_search, "bias": float32
        [tgt_vocab]}, or {} where the kernels are off or the fused step does not pay."""
        dtype = self.compute_dtype
        if self.tie_embeddings:
            packed = native.pack_for_search(ops.cast(self.tgt_embedding.embeddings, dtype),
                                            "transposed")
            bias = self.output_bias
        else:
            packed = native.pack_for_search(ops.cast(self.output_proj.kernel, dtype))
            bias = self.output_proj.bias
        return {} if packed is None else {"packed": packed, "bias": ops.cast(bias, "float32")}

    # ---- search interface -----------------------------------------------------------

    def encode(self, source, training=None, search=False):
        """source int [batch, src_len] -> memory [batch, src_len, 2*enc], mask bool
        [batch, src_len], and the initial decoder state (a dict; see decode_step).
        search=True also packs the decoder's weights for the searches' kernels (see
        step_weights and decode_step's projection)."""
        mask = ops.not_equal(source, PAD_ID)
        embedded = self.dropout(self.src_embedding(source) * self.embed_scale, training=training)
        memory, h, c = self.encoder(embedded, mask=mask, training=training)
        state = {
            "lstm": self.bridge(h, c),
            "memory": memory,
            "keys": self.attention.keys(memory),
            "mask": mask,
            "weights": self.step_weights(search),
        }
        if self.input_feeding:
            state["feed"] = ops.zeros((ops.shape(source)[0], self.attentional.units),
                                      self.compute_dtype)
        return memory, mask, state

    def decode_step(self, tokens, state, float32_logits=True, projection=False):
        """One decoder step. tokens int [batch]; state from `encode` or a previous step:
        lstm: list of (h, c) [batch, dec] per layer; memory [batch, src_len, 2*enc];
        keys [batch, src_len, k]; mask [batch, src_len]; feed [batch, att] with input feeding;
        weights: step_weights(), the same for every sentence. Optionally sentence_rows int32
        [A]: memory, keys and mask then hold other sentences too, and the batch's rows in A
        equal groups read rows sentence_rows[a] (a search's sentences still searched).

        Returns logits [batch, tgt_vocab], the new state, attention weights [batch, src_len].
        The logits are float32, or with float32_logits=False in the compute dtype (the
        searches read bfloat16 logits directly: no cast of a vocabulary-wide tensor).
        projection=True, with a state from encode(..., search=True) where the fused step
        runs (translator.native.fused_step): a translator.top_k.Projection instead, the
        logits left for the searches' top-k kernel to compute (and never write out).
        """
        table = state["weights"]["embedding"]
        embedded = ops.take(table, tokens, axis=0) * ops.cast(self.embed_scale, table.dtype)
        attentional, state, weights = self._step(embedded, state, False)
        packed = state["weights"].get("projection") if projection else None
        if packed:
            return Projection(attentional, packed["packed"], packed["bias"]), state, weights
        logits = self.logits(attentional, state["weights"].get("output"), float32_logits)
        return logits, state, weights

    def _step(self, embedded, state, training):
        """embedded [batch, emb] -> attentional [batch, att], new state, weights [batch, src]."""
        x = embedded
        if self.input_feeding:
            x = ops.concatenate([x, state["feed"]], -1)
        new_lstm = []
        for lstm, (h, c), weights in zip(self.decoder_lstms, state["lstm"],
                                         state["weights"]["lstm"]):
            x, c = lstm.step(x, (h, c), weights, training=training)
            new_lstm.append((x, c))
            x = self.dropout(x, training=training)
        attentional, weights = self._attend(ops.expand_dims(x, 1), state, training)
        attentional = ops.squeeze(attentional, 1)
        new_state = {**state, "lstm": new_lstm}
        if self.input_feeding:
            new_state["feed"] = attentional
        return attentional, new_state, ops.squeeze(weights, 1)

    def get_config(self) -> dict:
        return {**super().get_config(), **self.settings}

    def build(self, input_shape=None):
        """Creates every weight by running a one-token batch through the model."""
        if self.built:
            return
        self.call({"source": ops.ones((1, 2), "int32"), "target_in": ops.ones((1, 2), "int32")})
        self.built = True


def smoothed_cross_entropy(labels, logits, smoothing: float):
    """Per-token cross-entropy against the label-smoothed target distribution
    (1 - smoothing on the label, smoothing spread uniformly over the vocabulary).

    labels int [...], logits [..., vocab] (float32 or bfloat16) -> loss float32 [...].
    Written with its own gradient, softmax - target: TensorFlow's derived gradient for
    picking the label's log-probability is a scatter into a dense batch x length x
    vocabulary tensor, which took 40% of a training step on CPU. With the compiled kernels
    (translator.native) forward and backward are one op each, one read of the logits.
    Without them each is one XLA-compiled function (see _smoothed_loss and _smoothed_grad):
    XLA fuses the half-dozen passes over the vocabulary-wide logits (cast, max, exp, sums;
    the gradient's softmax, scale and cast) into two; it compiles once per logits shape
    (about 0.15 s; a few dozen shapes in a run). The kernels train 1.06-1.08x faster
    (bench/train_ablation.py).
    """
    vocab = tf.shape(logits)[-1]
    flat_labels = tf.reshape(tf.cast(labels, tf.int32), [-1])
    fast = native.smoothed_cross_entropy(tf.reshape(logits, [-1, vocab]), flat_labels,
                                         float(smoothing))
    if fast is not None:
        return tf.reshape(fast, tf.shape(labels))
    smoothing = tf.constant(smoothing, tf.float32)

    @tf.custom_gradient
    def loss_of(z):
        loss, log_norm = _smoothed_loss(z, flat_labels, smoothing)

        def grad(upstream):
            return _smoothed_grad(z, flat_labels, log_norm, upstream, smoothing)
        return loss, grad

    return tf.reshape(loss_of(tf.reshape(logits, [-1, vocab])), tf.shape(labels))


@tf.function(jit_compile=True)
def _smoothed_loss(logits, labels, smoothing):
    """logits [N, vocab] (any float dtype), labels [N] -> loss [N], log-normaliser [N],
    in float32: loss = log Z - (1 - s) * z[label] - s * mean(z)."""
    z = tf.cast(logits, tf.float32)
    top = tf.reduce_max(z, -1)
    log_norm = top + tf.math.log(tf.reduce_sum(tf.exp(z - top[:, None]), -1))
    at_label = tf.gather(z, labels, batch_dims=1)
    return log_norm - (1.0 - smoothing) * at_label - smoothing * tf.reduce_mean(z, -1), log_norm


@tf.function(jit_compile=True)
def _smoothed_grad(logits, labels, log_norm, upstream, smoothing):
    """d loss / d logits [N, vocab] in the logits' dtype: upstream * (softmax - target)."""
    z = tf.cast(logits, tf.float32)
    vocab = tf.shape(z)[-1]
    target = (tf.one_hot(labels, vocab, 1.0 - smoothing, 0.0)
              + smoothing / tf.cast(vocab, tf.float32))
    return tf.cast((tf.exp(z - log_norm[:, None]) - target) * upstream[:, None], logits.dtype)


@keras.saving.register_keras_serializable(package="translator")
class MaskedCrossEntropy(keras.losses.Loss):
    """Token-level cross-entropy with label smoothing, averaged over non-pad target tokens.

    y_true int [batch, tgt_len] (PAD_ID where padded), y_pred logits [batch, tgt_len, vocab].
    """

    def __init__(self, label_smoothing: float = 0.0, name: str = "masked_cross_entropy",
                 **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.label_smoothing = label_smoothing

    def __call__(self, y_true, y_pred, sample_weight=None):
        """As Keras' Loss.__call__, except that the logits keep their dtype (Keras would
        cast bfloat16 logits to float32 first; smoothed_cross_entropy computes in float32
        whatever it reads)."""
        if sample_weight is not None:
            return super().__call__(y_true, y_pred, sample_weight)
        with tf.name_scope(self.name):
            return self.call(tf.convert_to_tensor(y_true), tf.convert_to_tensor(y_pred))

    def call(self, y_true, y_pred):
        loss = smoothed_cross_entropy(y_true, y_pred, self.label_smoothing)
        mask = ops.cast(ops.not_equal(y_true, PAD_ID), "float32")
        return ops.sum(loss * mask) / ops.maximum(ops.sum(mask), 1.0)

    def get_config(self) -> dict:
        return {**super().get_config(), "label_smoothing": self.label_smoothing}
