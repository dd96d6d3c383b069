"""The training loss: cross-entropy against label-smoothed targets, over real tokens only."""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from translator.data.tokenizer import PAD_ID


def smoothed_cross_entropy(labels, logits, smoothing: float):
    """labels int [...], logits [..., vocab] -> loss float32 [...].

    The target distribution puts 1 - smoothing on the label and spreads smoothing evenly
    over the vocabulary; the loss is its cross-entropy with softmax(logits), computed in
    float32 whatever the logits' dtype. TensorFlow's fused op computes the loss and its
    gradient (softmax - target) together.
    """
    vocab = tf.shape(logits)[-1]
    uniform = smoothing / tf.cast(vocab, tf.float32)
    target = tf.one_hot(labels, vocab, 1.0 - smoothing, 0.0) + uniform
    return tf.nn.softmax_cross_entropy_with_logits(target, tf.cast(logits, tf.float32))


def global_tokens(tokens):
    """The number of target tokens in the whole batch: `tokens`, except in a replica of a
    tf.distribute strategy with several, where each replica holds a part of the batch and
    its parts' counts are summed. Each replica's loss is then its share of the batch's
    mean, and the replicas' gradients sum to the one-device gradient (train/distribute.py)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return tokens
    return context.all_reduce(tf.distribute.ReduceOp.SUM, tf.stop_gradient(tokens))


@keras.saving.register_keras_serializable(package="translator")
class MaskedCrossEntropy(keras.losses.Loss):
    """Token-level cross-entropy with label smoothing, averaged over non-pad target tokens.

    y_true int [batch, tgt_len] (PAD_ID where padded), y_pred logits [batch, tgt_len, vocab].
    """

    def __init__(self, label_smoothing: float = 0.0, name: str = "masked_cross_entropy",
                 operations=None, **kwargs) -> None:
        """operations: the model's (translator.model.operations); None: the plain
        smoothed_cross_entropy. Seq2Seq.use_operations sets it on a compiled model."""
        super().__init__(name=name, **kwargs)
        self.label_smoothing, self.operations = label_smoothing, operations

    def __call__(self, y_true, y_pred, sample_weight=None):
        """As Keras' Loss.__call__, except that the logits keep their dtype (Keras would
        cast bfloat16 logits to float32 first; the loss computes in float32 whatever it
        reads)."""
        if sample_weight is not None:
            return super().__call__(y_true, y_pred, sample_weight)
        with tf.name_scope(self.name):
            return self.call(tf.convert_to_tensor(y_true), tf.convert_to_tensor(y_pred))

    def call(self, y_true, y_pred):
        cross_entropy = (self.operations.cross_entropy if self.operations is not None
                         else smoothed_cross_entropy)
        loss = cross_entropy(y_true, y_pred, self.label_smoothing)
        mask = ops.cast(ops.not_equal(y_true, PAD_ID), "float32")
        return ops.sum(loss * mask) / ops.maximum(global_tokens(ops.sum(mask)), 1.0)

    def get_config(self) -> dict:
        return {**super().get_config(), "label_smoothing": self.label_smoothing}
