"""Adam with TensorFlow's fused update.

Keras 3's Adam writes each variable's update as about eight element-wise ops (cast,
subtract, multiply, square, sqrt, divide, three assignments), each a pass over the
variable. TensorFlow's own ResourceApplyAdam does the same arithmetic (the same
bias-corrected step size, epsilon outside the square root) in one multi-threaded pass
(what that is worth: bench/train_ablation.py). Sparse gradients, AMSGrad and non-float32
variables keep Keras' update.

Under a tf.distribute strategy with several replicas, Keras (3.15) would clip each
replica's part of the gradient before the parts are summed; here the clipping waits for
the sum, so it clips the gradient a one-device run clips.
"""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="translator")
class FusedAdam(keras.optimizers.Adam):
    """keras.optimizers.Adam, same arguments and state, one fused op per dense update."""

    def update_step(self, gradient, variable, learning_rate):
        if (isinstance(gradient, tf.IndexedSlices) or self.amsgrad
                or variable.dtype != "float32" or keras.backend.backend() != "tensorflow"):
            return super().update_step(gradient, variable, learning_rate)
        index = self._get_variable_index(variable)
        step = tf.cast(self.iterations + 1, tf.float32)
        beta_1 = tf.cast(self.beta_1, tf.float32)
        beta_2 = tf.cast(self.beta_2, tf.float32)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=self._momentums[index].handle,
            v=self._velocities[index].handle,
            beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(learning_rate, tf.float32), beta1=beta_1, beta2=beta_2,
            epsilon=tf.cast(self.epsilon, tf.float32), grad=tf.cast(gradient, tf.float32))

    def _clip_gradients(self, grads):
        if _replicas() > 1:
            return grads  # clipped once summed: _all_reduce_sum_gradients
        return super()._clip_gradients(grads)

    def _all_reduce_sum_gradients(self, grads_and_vars):
        """Keras' sum over the replicas, then the clipping (clipnorm per variable)."""
        summed = super()._all_reduce_sum_gradients(grads_and_vars)
        if _replicas() == 1:
            return summed
        clipped = super()._clip_gradients([grad for grad, _ in summed])
        return [(grad, var) for grad, (_, var) in zip(clipped, summed)]


def _replicas() -> int:
    return tf.distribute.get_strategy().num_replicas_in_sync
