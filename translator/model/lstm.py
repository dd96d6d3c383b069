"""The LSTM, as the textbook writes it.

For each time step t, from the input x_t and the previous hidden state h_{t-1} and cell
c_{t-1}:

    z   = [x_t, h_{t-1}] W + b          one matmul for all four gates, W = [W_x; W_h]
    i_t = sigmoid(z_i)                  input gate: how much of the candidate to write
    f_t = sigmoid(z_f)                  forget gate: how much of the old cell to keep
    g_t = tanh(z_g)                     candidate: what could be written
    o_t = sigmoid(z_o)                  output gate: how much of the cell to show
    c_t = f_t * c_{t-1} + i_t * g_t     the cell: the memory carried along the sentence
    h_t = o_t * tanh(c_t)               the hidden state: what the next layer reads

The cell state is updated by multiplying and adding only, so what an early word wrote
can survive many steps (while f_t stays near 1): that is how an LSTM carries information
across a sentence. Gates are ordered i, f, g, o, as in Keras' LSTMCell.

Under mixed precision (bfloat16 matmuls) the gate arithmetic and c stay in float32, so
the cell loses no precision from step to step; h is returned in the input's dtype.
"""

from __future__ import annotations

import tensorflow as tf


def lstm_cell(z: tf.Tensor, c_prev: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The gates and the new state from the pre-activations.

    z [batch, 4 * units]: [x_t, h_{t-1}] W + b; c_prev [batch, units].
    Returns h_t [batch, units] in z's dtype and c_t [batch, units] float32.
    """
    z_i, z_f, z_g, z_o = tf.split(tf.cast(z, tf.float32), 4, axis=-1)
    i = tf.sigmoid(z_i)  # input gate
    f = tf.sigmoid(z_f)  # forget gate
    g = tf.tanh(z_g)  # candidate
    o = tf.sigmoid(z_o)  # output gate
    c = f * tf.cast(c_prev, tf.float32) + i * g
    h = o * tf.tanh(c)
    return tf.cast(h, z.dtype), c


def lstm_step(x: tf.Tensor, h: tf.Tensor, c: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor
              ) -> tuple[tf.Tensor, tf.Tensor]:
    """One time step: x [batch, in], h [batch, units], c [batch, units];
    kernel [in + units, 4 * units] (W_x stacked over W_h), bias [4 * units].
    Returns (h_t, c_t), each [batch, units]."""
    z = tf.matmul(tf.concat([x, h], axis=-1), kernel) + bias
    return lstm_cell(z, c)


def lstm_sequence(xw: tf.Tensor, h0: tf.Tensor, c0: tf.Tensor, recurrent_kernel: tf.Tensor,
                  lengths: tf.Tensor, reverse: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
    """Runs lstm_cell over time, one step after another.

    xw [batch, time, 4 * units]: x_t W_x + b for every step, computed before the loop
    (one large matmul: only h_{t-1} W_h must wait for the previous step; the two parts
    are added in float32);
    h0, c0 [batch, units]: the initial state; recurrent_kernel W_h [units, 4 * units];
    lengths int32 [batch]: real tokens per row. reverse: each row runs from its last real
    token back to its first (the backward direction of a bidirectional encoder), then over
    its padding. Returns every step's h (xw's dtype) and c (float32), each
    [batch, time, units], at the position the step read. TensorFlow differentiates it.
    """
    def step(state, xw_t):
        h, c = state
        z = tf.cast(xw_t, tf.float32) + tf.cast(tf.matmul(h, recurrent_kernel), tf.float32)
        h, c = lstm_cell(z, c)
        return tf.cast(h, xw.dtype), c

    def time_major(x):  # [batch, time, ...] -> [time, batch, ...], reversed rows if asked
        if reverse:
            x = tf.reverse_sequence(x, lengths, seq_axis=1, batch_axis=0)
        return tf.transpose(x, (1, 0, 2))

    def batch_major(x):  # and back
        x = tf.transpose(x, (1, 0, 2))
        return tf.reverse_sequence(x, lengths, seq_axis=1, batch_axis=0) if reverse else x

    hs, cs = tf.scan(step, time_major(xw), initializer=(h0, tf.cast(c0, tf.float32)))
    return batch_major(hs), batch_major(cs)
