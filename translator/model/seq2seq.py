"""The sequence-to-sequence model: BiLSTM encoder, LSTM decoder, Luong-style attention.

Reading order: translator/model/lstm.py (the LSTM equations), attention.py (scores,
softmax, context), then this file: `encode` runs the encoder once per sentence, and
`decode_step` is one step of the decoder, numbered as the textbook describes it. Training
(`call`) runs the same decoder over whole target sequences at once: the decoder LSTMs over
every position (teacher forcing: the reference's previous token is the input), then the
attention for every position together. With `input_feeding=True` the previous
attentional vector is part of the next step's input, which forces training to step
through time (`tf.scan` over decode steps).

Every computation goes through `self.operations` (translator.model.operations): the plain
TensorFlow path, or the compiled kernels where translator.model_folder chose them.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers, ops

from translator.data.tokenizer import PAD_ID
from translator.model.layers import LSTM, Attention, Bridge, Dropout, Encoder
from translator.model.loss import MaskedCrossEntropy
from translator.model.operations import PLAIN, Operations

STATIC_KEYS = ("memory", "keys", "mask")  # per-sentence decoder state, fixed during search
SHARED_KEYS = ("weights",)  # decoder state shared by every sentence (never tiled or reordered)


@keras.saving.register_keras_serializable(package="translator")
class Seq2Seq(keras.Model):
    """Input: {"source": int [batch, src_len], "target_in": int [batch, tgt_len]}.

    Output: logits [batch, tgt_len, tgt_vocab] for the next target token at every position,
    in the compute dtype (bfloat16 under mixed precision; MaskedCrossEntropy computes in
    float32 whatever it reads).

    A model made or loaded by Keras alone runs the plain operations; translator.model_folder
    (build_model, load_weights) gives it this machine's (use_operations).
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
        word_dropout: float = 0.0,
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
            word_dropout=word_dropout,
        )
        self.input_feeding, self.tie_embeddings = input_feeding, tie_embeddings
        dtype = self.dtype_policy  # sublayers share it: float32, or mixed_bfloat16 (see training)
        self._make_embeddings(src_vocab_size, tgt_vocab_size, embedding_dim, share_embeddings)
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
        self.attentional.build((None, 2 * encoder_units + decoder_units))  # read as weights
        self.dropout = Dropout(dropout, dtype=dtype)
        # whole words: a position's embedding zeroed (one draw per position, not per unit)
        self.word_dropout = (Dropout(word_dropout, noise_shape=(None, None, 1), dtype=dtype,
                                     name="word_dropout") if word_dropout else None)
        if not tie_embeddings:
            self.output_proj = layers.Dense(tgt_vocab_size, name="output_proj", dtype=dtype)
            self.output_proj.build((None, attentional_dim))  # read as weights, not called
        else:
            self.output_bias = self.add_weight(
                shape=(tgt_vocab_size,), initializer="zeros", name="output_bias")

    def _make_embeddings(self, src_vocab_size, tgt_vocab_size, dim, share: bool) -> None:
        """Embeddings start at N(0, 1/dim) and are scaled by sqrt(dim) where they enter the
        network: inputs of unit scale (Keras' default U(-0.05, 0.05) starves the LSTMs and
        learning crawls), while tied output logits start small."""
        self.embed_scale = float(dim) ** 0.5
        init = keras.initializers.RandomNormal(stddev=1.0 / self.embed_scale)
        dtype = self.dtype_policy
        self.tgt_embedding = layers.Embedding(tgt_vocab_size, dim, name="tgt_embedding",
                                              embeddings_initializer=init, dtype=dtype)
        self.src_embedding = (
            self.tgt_embedding if share else
            layers.Embedding(src_vocab_size, dim, name="src_embedding",
                             embeddings_initializer=init, dtype=dtype))
        self.tgt_embedding.build()  # step_weights() reads the table before any call

    # ---- the operations: plain, or the compiled kernels -------------------------------

    operations = PLAIN

    def use_operations(self, operations: Operations) -> None:
        """Runs every layer (and the loss it was compiled with) through `operations`."""
        self.operations = operations
        for layer in self._flatten_layers():
            if hasattr(type(layer), "operations"):
                layer.operations = operations
        if isinstance(getattr(self, "loss", None), MaskedCrossEntropy):
            self.loss.operations = operations

    # ---- training graph -------------------------------------------------------------

    def call(self, inputs, training=None):
        """Teacher-forced logits for every target position (see the class docstring)."""
        source, target_in = inputs["source"], inputs["target_in"]
        memory, mask, state = self.encode(source, training=training)
        embedded = self.dropout(self._drop_words(self.tgt_embedding(target_in) * self.embed_scale,
                                                 training), training=training)
        if self.input_feeding:
            attentional = self._feed_loop(embedded, state, training)
        else:
            hidden = embedded
            for lstm, (h, c) in zip(self.decoder_lstms, state["lstm"]):
                hidden = lstm(hidden, initial_state=(h, c), training=training)[0]
                hidden = self.dropout(hidden, training=training)
            context, _ = self.attention(hidden, state["keys"], memory, mask, training=training)
            attentional = self.attentional_vector(context, hidden, self._attentional_weights())
        # in the compute dtype: the loss reads bfloat16 logits as they are and computes in
        # float32 (a cast would be a pass over [batch, tgt_len, vocab] each way)
        return self.logits(self.dropout(attentional, training=training), float32=False)

    def _drop_words(self, embedded, training):
        """Word dropout (training only): embedded [batch, len, emb] with whole positions
        zeroed at the rate model.word_dropout, so the network cannot lean on any one word."""
        if self.word_dropout is None:
            return embedded
        return self.word_dropout(embedded, training=training)

    def _feed_loop(self, embedded, state, training):
        """Input feeding over time: embedded [batch, tgt_len, emb] -> [batch, tgt_len, att].

        tf.scan rather than keras.ops.scan: the latter mis-infers its outputs' structure
        when the carry holds several tensors (Keras 3.15, TensorFlow backend).
        """
        init = {k: state[k] for k in ("lstm", "feed")}  # weights: cast once, outside the loop

        def step(carry, x):
            _, new_state, _ = self._decoder_step(x, {**state, **carry}, training)
            return {k: new_state[k] for k in init}

        carries = tf.scan(step, ops.transpose(embedded, (1, 0, 2)), initializer=init)
        return ops.transpose(carries["feed"], (1, 0, 2))

    def attentional_vector(self, context, hidden, weights):
        """~h = tanh(W_c [context; h] + b_c): context [..., mem], hidden [..., dec] ->
        [..., att]; weights (W_c, b_c) in the compute dtype."""
        kernel, bias = weights
        return ops.tanh(ops.matmul(ops.concatenate([context, hidden], -1), kernel) + bias)

    def _attentional_weights(self):
        dtype = self.compute_dtype
        return ops.cast(self.attentional.kernel, dtype), ops.cast(self.attentional.bias, dtype)

    def _output_weights(self, for_search=False):
        """The output projection as the model's operations read it (see Operations.output)."""
        dtype = self.compute_dtype
        if self.tie_embeddings:  # the target embedding table [vocab, att], transposed
            return self.operations.output_weights(
                ops.cast(self.tgt_embedding.embeddings, dtype), self.output_bias, True, for_search)
        return self.operations.output_weights(ops.cast(self.output_proj.kernel, dtype),
                                              self.output_proj.bias, False, for_search)

    def logits(self, attentional, weights=None, float32=True):
        """attentional [..., att] -> logits [..., tgt_vocab], float32 (so that softmax and
        loss keep full precision) unless float32 is False (the compute dtype)."""
        weights = self._output_weights() if weights is None else weights
        dtype = "float32" if float32 else self.compute_dtype
        return self.operations.output(attentional, weights, dtype)

    def step_weights(self, for_search=False) -> dict:
        """The weights the decoder reads at every step, cast to the compute dtype and
        prepared by the model's operations once (per search), not once per step;
        for_search: as a search reads them (the kernels pack them for the fused step)."""
        return {
            "embedding": ops.cast(self.tgt_embedding.embeddings, self.compute_dtype),
            "lstm": [lstm.step_weights(for_search) for lstm in self.decoder_lstms],
            "attentional": self._attentional_weights(),
            "output": self._output_weights(for_search),
        }

    # ---- search interface -----------------------------------------------------------

    def encode(self, source, training=None, for_search=False):
        """source int [batch, src_len] -> memory [batch, src_len, 2*enc], mask bool
        [batch, src_len], and the initial decoder state (a dict; see decode_step).
        for_search: the decoder's weights prepared for a search (see decode_step)."""
        mask = ops.not_equal(source, PAD_ID)
        embedded = self.dropout(self._drop_words(self.src_embedding(source) * self.embed_scale,
                                                 training), training=training)
        memory, h, c = self.encoder(embedded, mask=mask, training=training)
        state = {
            "lstm": self.bridge(h, c),
            "memory": memory,
            "keys": self.attention.keys(memory),
            "mask": mask,
            "weights": self.step_weights(for_search),
        }
        if self.input_feeding:
            state["feed"] = ops.zeros((ops.shape(source)[0], self.attentional.units),
                                      self.compute_dtype)
        return memory, mask, state

    def decode_step(self, tokens, state, for_search=False):
        """One decoder step. tokens int [batch]: the previous target token; state from
        `encode` or a previous step: lstm: list of (h, c) [batch, dec] per layer; memory
        [batch, src_len, 2*enc]; keys [batch, src_len, k]; mask [batch, src_len]; feed
        [batch, att] with input feeding; weights: step_weights(), the same for every
        sentence. Optionally sentence_rows int32 [A]: memory, keys and mask then hold other
        sentences too, and the batch's rows in A equal groups read rows sentence_rows[a]
        (a search's sentences still searched).

        Returns logits [batch, tgt_vocab] float32, the new state and the attention weights
        [batch, src_len]. for_search: instead of the logits, what the model's operations
        give a search (Operations.search_output: the logits in the compute dtype, or the
        kernels' projection that a search's top-k reads without writing the logits out).
        """
        # 1. embed the previous target token
        table = state["weights"]["embedding"]
        embedded = ops.take(table, tokens, axis=0) * ops.cast(self.embed_scale, table.dtype)
        # 2.-5. the decoder LSTMs, attention and the attentional vector
        attentional, state, weights = self._decoder_step(embedded, state, False)
        # 6. project to the vocabulary
        output = state["weights"]["output"]
        if for_search:
            return self.operations.search_output(attentional, output), state, weights
        return self.logits(attentional, output), state, weights

    def _decoder_step(self, embedded, state, training):
        """embedded [batch, emb] -> attentional [batch, att], new state, weights [batch, src]."""
        step_weights = state["weights"]
        # 2. with input feeding, the previous attentional vector joins the input
        x = embedded
        if self.input_feeding:
            x = ops.concatenate([x, state["feed"]], -1)
        # 3. one step of each decoder LSTM layer
        new_lstm = []
        for lstm, (h, c), weights in zip(self.decoder_lstms, state["lstm"], step_weights["lstm"]):
            x, c = lstm.step(x, (h, c), weights, training=training)
            new_lstm.append((x, c))
            x = self.dropout(x, training=training)
        # 4. attention: score the source positions against the top layer's h, softmax, context
        hidden = ops.expand_dims(x, 1)  # [batch, 1, dec]: one target position
        context, weights = self.attention(hidden, state["keys"], state["memory"], state["mask"],
                                          training=training, rows=state.get("sentence_rows"))
        # 5. the attentional vector ~h = tanh(W_c [context; h] + b_c)
        attentional = ops.squeeze(
            self.attentional_vector(context, hidden, step_weights["attentional"]), 1)
        new_state = {**state, "lstm": new_lstm}
        if self.input_feeding:
            new_state["feed"] = attentional
        return attentional, new_state, ops.squeeze(weights, 1)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Under a tf.distribute strategy Keras builds the loss, metrics and optimizer
        before fit from a first batch of the distributed dataset, which it reduces with
        strategy.reduce: MultiWorkerMirroredStrategy refuses that for a dict of inputs
        (Keras 3.15; keras-team/keras#20329). A one-token batch has every shape it needs."""
        if getattr(self, "_distribute_strategy", None) is None:
            return  # as Keras: built when the train function is traced
        ones = ops.ones((1, 2), "int32")
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=({"source": ones, "target_in": ones}, ones, None))

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        """Keras' step logs; across workers each of shape [1]: Keras reduces a step's logs
        over MultiWorkerMirroredStrategy's replicas along axis 0, which a scalar lacks
        (Keras 3.15)."""
        logs = super().compute_metrics(x, y, y_pred, sample_weight)
        if isinstance(self.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
            logs = {name: ops.reshape(value, (1,)) for name, value in logs.items()}
        return logs

    def get_config(self) -> dict:
        return {**super().get_config(), **self.settings}

    def build(self, input_shape=None):
        """Creates every weight by running a one-token batch through the model."""
        if self.built:
            return
        self.call({"source": ops.ones((1, 2), "int32"), "target_in": ops.ones((1, 2), "int32")})
        self.built = True
