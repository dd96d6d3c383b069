"""The LSTM recurrence over a whole sequence, with a hand-written backward pass.

With the compiled kernels (translator.native) a whole sequence is one op each way
(LstmSequence, LstmSequenceGrad) and a single step's gates are one op (LstmCell, for
code that steps through time itself: searches, input feeding). Without them, the
TensorFlow loops below, written the same way: only the part that must run step by step
is in the loop (h_{t-1} @ U plus the gates); the input projection x @ W + b for every
time step is one large matmul before the loop (TensorFlow differentiates it as usual),
and the backward pass loops once, carrying only the gradients of h and c; the recurrent
kernel's gradient is then one large matmul over all steps (h_{t-1}^T @ dz_t summed), not
a small one accumulated per step. That halves the matmuls inside the loops (forward 2 ->
1, backward 4 -> 1) and removes the per-step weight casts and gradient accumulation of a
generic RNN loop.

Gates are ordered as in Keras' LSTMCell: input, forget, candidate, output.
"""

from __future__ import annotations

import tensorflow as tf

from translator import native


def _gates(z, c):
    """z [batch, 4*units] pre-activations, c [batch, units] -> the activations
    (i, f, g, o, tanh(new c)), the new c and the new h, all float32.

    The gate arithmetic runs in float32 whatever the compute dtype: TensorFlow's CPU
    kernels for element-wise bfloat16 ops are 2-4x slower than float32 ones (there is no
    vectorised bfloat16 sigmoid or tanh), and c keeps full precision from step to step.
    """
    i, f, g, o = tf.split(tf.cast(z, tf.float32), 4, axis=-1)
    i, f, o, g = tf.sigmoid(i), tf.sigmoid(f), tf.sigmoid(o), tf.tanh(g)
    c = f * tf.cast(c, tf.float32) + i * g
    tanh_c = tf.tanh(c)
    return (i, f, g, o, tanh_c), c, o * tanh_c


def lstm_cell(z, c, save=False):
    """One step from its pre-activations z = x @ W + h @ U + b [batch, 4*units] and the
    previous c [batch, units] -> (h in z's dtype, c in float32). save: keep the
    activations for the kernel's gradient (when training steps through time); a search
    leaves it False and nothing is written but h and c."""
    fast = native.lstm_cell([z], c, save=save)
    if fast is not None:
        return fast[:2]
    _, c, h = _gates(z, c)
    return tf.cast(h, z.dtype), c


def _forward_step(xw_t, h, c_before, kernel):
    """(h, c float32, saved float32 [batch, 6*units]: i, f, g, o, tanh(c), c_{t-1})."""
    recurrent = tf.matmul(h, kernel)
    # the two parts added in float32, as the kernels do
    gates, c, h_new = _gates(tf.cast(xw_t, tf.float32) + tf.cast(recurrent, tf.float32), c_before)
    return tf.cast(h_new, xw_t.dtype), c, tf.concat([*gates, c_before], -1)


def _backward_step(dh_out, dc_out, dh_next, dc_next, saved):
    """Gradients at one step -> (dz [batch, 4*units] in dh_out's dtype, d c_{t-1} float32).
    dh_next arrives through the next step's recurrent matmul, in the compute dtype."""
    i, f, g, o, tanh_c, c_before = tf.split(saved, 6, axis=-1)
    dh = tf.cast(dh_out, tf.float32) + tf.cast(dh_next, tf.float32)
    dc = tf.cast(dc_out, tf.float32) + dc_next + dh * o * (1 - tanh_c * tanh_c)
    dz = tf.concat([dc * g * i * (1 - i), dc * c_before * f * (1 - f),
                    dc * i * (1 - g * g), dh * tanh_c * o * (1 - o)], -1)
    return tf.cast(dz, dh_out.dtype), dc * f


def lstm_sequence(xw, h0, c0, recurrent_kernel, lengths=None, reverse=False, save=True):
    """Runs the recurrence over time.

    xw [batch, time, 4*units]: the input projections x_t @ W + b; h0, c0 [batch, units];
    recurrent_kernel [units, 4*units]; lengths int32 [batch] (default: all `time`).
    Returns every step's h (in xw's dtype) and c (float32), each [batch, time, units].
    reverse: each row runs backwards over its first `lengths` positions (the backward
    direction of a bidirectional layer: its real tokens last to first, then its padding),
    and each step's h and c are returned at the position it read. Padded steps are
    computed like any other: callers read final states where each sequence ends. save:
    keep what the backward pass reads (False outside training: a gradient still works, at
    the cost of running the sequence again).

    With the compiled kernels the whole loop, forward and backward, is one op each way
    (native.lstm_sequence); without them the tf.scan loops of _time_major_sequence, over
    reversed copies of the rows when reverse.
    """
    if lengths is None:
        lengths = tf.fill(tf.shape(xw)[:1], tf.shape(xw)[1])
    fast = native.lstm_sequence(xw, h0, c0, recurrent_kernel, lengths, reverse, save)
    if fast is not None:
        return fast

    def arrange(x):  # batch-major -> time-major, each row reversed up to its length
        if reverse:
            x = tf.reverse_sequence(x, lengths, seq_axis=1, batch_axis=0)
        return tf.transpose(x, (1, 0, 2))

    def restore(x):  # and back
        x = tf.transpose(x, (1, 0, 2))
        return tf.reverse_sequence(x, lengths, seq_axis=1, batch_axis=0) if reverse else x

    hs, cs = _time_major_sequence(arrange(xw), h0, c0, recurrent_kernel)
    return restore(hs), restore(cs)


def _time_major_sequence(xw, h0, c0, recurrent_kernel):
    """lstm_sequence over xw [time, batch, 4*units] with TensorFlow's loops (tf.scan, each
    step a matmul and _forward_step); returns hs, cs time-major."""
    @tf.custom_gradient
    def run(xw, h0, c0, kernel):
        def forward(carry, xw_t):
            h, c_before, _ = carry
            return _forward_step(xw_t, h, c_before, kernel)

        first = (h0, tf.cast(c0, tf.float32))
        saved = tf.zeros([tf.shape(h0)[0], 6 * h0.shape[-1]], tf.float32)
        hs, cs, acts = tf.scan(forward, xw, initializer=(*first, saved))

        def backward(dhs, dcs):
            kernel_t = tf.transpose(kernel)

            def step(carry, inputs):
                dh_next, dc_next, _ = carry
                dh_out, dc_out, saved_t = inputs
                dz, dc_prev = _backward_step(dh_out, dc_out, dh_next, dc_next, saved_t)
                return tf.matmul(dz, kernel_t), dc_prev, dz

            # scanned in reverse, position 0 holds what flows out of the first step:
            # the gradients of the initial states
            dh_prevs, dc_prevs, dzs = tf.scan(
                step, (dhs, dcs, acts), reverse=True,
                initializer=(tf.zeros_like(h0), tf.zeros_like(first[1]), tf.zeros_like(xw[0])))
            h_prev = tf.concat([h0[None], hs[:-1]], 0)
            dkernel = tf.einsum("tbu,tbg->ug", h_prev, dzs)
            return (dzs, tf.cast(dh_prevs[0], h0.dtype), tf.cast(dc_prevs[0], c0.dtype),
                    dkernel)

        return (hs, cs), backward

    return run(xw, h0, c0, recurrent_kernel)
