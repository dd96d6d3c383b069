"""The compiled kernels (translator/kernels/csrc/*.cc): building and loading the op
library, and a Python function per op. translator.kernels.operations offers them to a
model as whole operations; docs/kernels.md describes each.

* TopKLogNorm (top_k.cc): a search step's k best tokens and log-normaliser from the
  vocabulary-wide logits, in one read of each row.
* ProjectTopK (top_k.cc) and LstmStep (lstm_cell.cc), the searches' fused decoder step on
  weights packed once per search (PackWeights, pack.cc): the output projection computed a
  block at a time and folded into each row's top k and log-normaliser while in cache (the
  logits are never written out), and an LSTM step's product with the cell run on each
  panel of gates while it is in registers. Both on csrc/gemm.h's register-tiled product.
* LstmCell and LstmCellGrad (lstm_cell.cc): one LSTM step's gate arithmetic, forward and
  backward, in one op each.
* LstmSequence and LstmSequenceGrad (lstm_cell.cc, with gemm.h): the recurrence over all
  time steps in one op each way, the recurrent product inside it, each worker thread
  running its own rows of the batch from the first step to the last.
* SeededDropout (dropout.cc): the dropout mask hashed from each element's position and a
  seed, in one pass.
* SmoothedCrossEntropy and its gradient (cross_entropy.cc): the label-smoothed loss, one
  read of the logits each way.
* GroupedAttention (attention.cc), outside training: a sentence's keys and memory read
  once for all its queries (a beam's hypotheses).

The ops that split work between threads (LstmSequence, ProjectTopK, LstmStep) give each of
the op's pool threads one task and wait: a part run on the calling thread would often
share a core with a pool thread.

The files are compiled on first use into one library (translator.kernels.build: the
instruction set chosen explicitly, the build decided once per machine and cached). The
vectors in csrc/simd.h are as wide as the CPU's registers: 16 floats with AVX-512, 8
otherwise. Without a compiler, after a failed build, or with TRANSLATOR_NATIVE=0, every
function here returns None and the model runs the plain operations. status() says which,
and why.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import tensorflow as tf

from translator.kernels import build as kernel_build, tuning as kernel_tuning

_lock = threading.Lock()
# "module": the loaded op library or None, "why": the reason, "plan": its
# kernel_build.Build, "tuning": {dtype: kernel_tuning's decision}
_state: dict[str, Any] = {}


def enabled() -> bool:
    """False when TRANSLATOR_NATIVE is set to 0 (or false/no/off)."""
    return kernel_build.env_switch("TRANSLATOR_NATIVE", "1") is not False


def _load(retry: bool = False) -> tuple[Any | None, str]:
    """(the op library, "on") or (None, why not), building it first if needed."""
    compiler = kernel_build.find_compiler()
    if compiler is None:
        return None, "no C++ compiler found (install g++ or set CXX)"
    if not kernel_build.sources():
        return None, f"no kernel sources in {kernel_build.SOURCE_DIR}"
    try:
        plan = _state["plan"] = kernel_build.plan(compiler)
        if retry:  # and time the fused step again
            plan.tuning.unlink(missing_ok=True)
        kernel_build.ensure_built(plan, retry=retry)
        return tf.load_op_library(str(plan.library)), "on"
    except kernel_build.BuildError as error:
        return None, (f"the build failed ({error}); log: {plan.log}; retry: "
                      "python -m translator info --rebuild")
    except Exception as error:  # noqa: BLE001 -- whatever stops the kernels, TF's ops run
        return None, f"{type(error).__name__}: {error}"


def build_plan() -> kernel_build.Build | None:
    """The build the kernels were loaded from (or failed in), once library() has run."""
    return _state.get("plan")


def library(retry: bool = False) -> Any | None:
    """The loaded op library, or None (disabled, no compiler, or the build failed: the
    reason is printed once per process, and status() returns it). retry: build again even
    where an earlier build failed, and measure the fused step again."""
    if not enabled():
        return None
    with _lock:
        if "module" not in _state or (retry and _state["module"] is None):
            _state["module"], _state["why"] = _load(retry)
            if _state["module"] is None:
                print(f"translator: the compiled kernels are off: {_state['why']}. Using "
                      "TensorFlow's ops (the same model, slower); TRANSLATOR_NATIVE=0 skips "
                      "them.", file=sys.stderr, flush=True)
        return _state["module"]


def status() -> str:
    """'on', or why the kernels are off (loading them first if that was not yet tried)."""
    if not enabled():
        return "off: TRANSLATOR_NATIVE=0"
    library()
    return _state["why"] if _state["why"] == "on" else f"off: {_state['why']}"


_KERNEL_DTYPES = ("float32", "bfloat16")


def _library_for(x: Any) -> Any | None:
    """The op library when it is loaded and x's dtype is one the kernels take, else None."""
    lib = library()
    return lib if lib is not None and x.dtype.name in _KERNEL_DTYPES else None


@tf.autograph.experimental.do_not_convert
def top_k_log_norm(logits: Any, k: int) -> tuple[Any, Any, Any] | None:
    """logits [N, V] float32 or bfloat16 -> (values float32 [N, k], indices int32 [N, k],
    log_norm float32 [N]), the top k by value (the lower index first among equal values),
    or None when the kernel is not available."""
    lib = _library_for(logits)
    if lib is None:
        return None
    return tuple(lib.top_k_log_norm(logits, k=k))


@tf.autograph.experimental.do_not_convert
def pack_weights(weights: Any, layout: str = "dense") -> Any | None:
    """A weight matrix (float32 or bfloat16) packed once for project_top_k or lstm_step:
    layout "dense" for W [depth, n], "transposed" for W^T given as [n, depth] (a tied
    embedding table), "gates" for an LSTM's stacked kernel [in + units, 4 * units].
    int32 words, this machine's layout; None when the kernels are not available."""
    lib = _library_for(weights)
    if lib is None:
        return None
    return lib.pack_weights(weights, layout=layout)


@tf.autograph.experimental.do_not_convert  # plain Python, called while a search is traced
def fused_step(dtype: str = "bfloat16") -> bool:
    """Whether the searches run the fused decoder step (LstmStep, ProjectTopK) for weights
    of dtype here: where the kernels are on and, unless TRANSLATOR_FUSED_STEP forces it,
    where it measured faster than the unfused step on this machine (kernel_tuning, once
    per machine, library and dtype)."""
    lib, choice = library(), kernel_build.env_switch("TRANSLATOR_FUSED_STEP", "auto")
    if dtype not in _KERNEL_DTYPES:
        return False
    if lib is None or choice is not None:
        return lib is not None and bool(choice)
    with _lock:
        tuning = _state.setdefault("tuning", {})
        if dtype not in tuning:
            try:
                tuning[dtype] = kernel_tuning.decide(lib, _state["plan"].tuning, dtype)
            except Exception as error:  # noqa: BLE001 -- a timing only: run the plain step
                print(f"translator: timing the fused decoder step failed ({error}); the "
                      "searches run the unfused step", file=sys.stderr, flush=True)
                tuning[dtype] = {"fused": False, "error": str(error)}
    return tuning[dtype]["fused"]


def fused_step_timing(dtype: str = "bfloat16") -> dict | None:
    """The measurement behind fused_step(dtype) (kernel_tuning.measure's result), or None
    when there was none (kernels off, the choice forced, or not asked yet)."""
    return _state.get("tuning", {}).get(dtype)


def pack_for_search(weights: Any, layout: str = "dense") -> Any | None:
    """pack_weights where the searches run the fused step for weights' dtype, else None:
    the caller then runs the unfused step."""
    dtype = weights.dtype.name
    return pack_weights(weights, layout) if fused_step(dtype) else None


@tf.autograph.experimental.do_not_convert
def project_top_k(features: Any, packed: Any, bias: Any, k: int) -> tuple[Any, Any, Any]:
    """top_k_log_norm of the logits features [N, depth] @ W + bias [vocab] (float32),
    without writing them out: W as packed by pack_weights from weights of features'
    dtype. No gradient (searches only)."""
    return tuple(library().project_top_k(features, packed, tf.cast(bias, tf.float32), k=k))


@tf.autograph.experimental.do_not_convert
def lstm_step(x: Any, h: Any, c: Any, packed: Any, bias: Any) -> tuple[Any, Any]:
    """One LSTM step, product and cell in one op: x [N, in], h [N, units] (one dtype), c
    [N, units], the stacked kernel [in + units, 4 * units] packed by pack_weights(...,
    "gates"), bias [4 * units] -> (h in h's dtype, c float32). No gradient (searches)."""
    return tuple(library().lstm_step(x, h, tf.cast(c, tf.float32), packed,
                                     tf.cast(bias, tf.float32)))


@tf.autograph.experimental.do_not_convert
def lstm_cell(parts: list, c: Any, save: bool = True) -> tuple[Any, Any, Any] | None:
    """One LSTM step's gates: parts, tensors [batch, 4 * units] whose sum is the
    pre-activation z (gate order i, f, g, o), c float32 [batch, units] -> h [batch, units]
    in z's dtype, the new c float32, and what LstmCellGrad needs, float32
    [batch, 6 * units] (i, f, g, o, tanh(new c), c), or [batch, 0] when save is False.
    None when the kernels are not available."""
    lib = _library_for(parts[0])
    if lib is None:
        return None
    return tuple(lib.lstm_cell(parts, tf.cast(c, tf.float32), save=save))


@tf.RegisterGradient("LstmCell")
def _lstm_cell_gradient(op: Any, dh: Any, dc: Any, _dsaved: Any) -> list:
    """The gradient of LstmCell, for code that differentiates a step directly (input
    feeding loops over decoder steps under a GradientTape), through LstmCellGrad.
    Recomputes the activations only when the op was run without saving them."""
    parts, c = op.inputs[:-1], op.inputs[-1]
    saved = op.outputs[2]
    if not op.get_attr("save"):
        saved = library().lstm_cell(parts, c, save=True)[2]
    h = op.outputs[0]
    dh = tf.zeros_like(h) if dh is None else dh
    dc = tf.zeros_like(c) if dc is None else dc
    dz, dc_prev = library().lstm_cell_grad(dh, tf.zeros_like(h), dc, tf.zeros_like(c), saved)
    return [dz] * len(parts) + [dc_prev]


@tf.autograph.experimental.do_not_convert
def lstm_sequence(xw: Any, h0: Any, c0: Any, kernel: Any, lengths: Any, reverse: bool = False,
                  save: bool = True) -> tuple[Any, Any] | None:
    """A whole LSTM sequence in one op, batch-major: xw [batch, time, 4 * units] (the input
    projections with their bias, float32 or bfloat16), h0 [batch, units], c0 [batch,
    units], the recurrent kernel [units, 4 * units], lengths int32 [batch] -> every step's h
    (in xw's dtype) and c (float32), each [batch, time, units] at the step's position;
    differentiable in the first four. reverse: each row runs from position lengths - 1 down
    to 0, then over its padding. save: keep what the gradient reads (training); without
    it a gradient recomputes the sequence first. None when the kernels are not available."""
    lib = _library_for(xw)
    if lib is None:
        return None
    hs, cs, _, _ = lib.lstm_sequence(xw, tf.cast(h0, xw.dtype), tf.cast(c0, tf.float32),
                                     tf.cast(kernel, xw.dtype), tf.cast(lengths, tf.int32),
                                     reverse=reverse, save=save)
    return hs, cs


@tf.RegisterGradient("LstmSequence")
def _lstm_sequence_gradient(op: Any, dhs: Any, dcs: Any, _dh_in: Any, _dsaved: Any) -> list:
    """Back through the steps in one op (dz at every position, and the initial states'
    gradients); the recurrent kernel's gradient is then one matmul over all positions,
    sum h_in^T dz, with h_in the h each step started from. The h_in and saved outputs are
    internal: no gradient flows from them. Recomputes the sequence when the op was run
    without saving."""
    kernel, lengths = op.inputs[3], op.inputs[4]
    hs, cs, h_in, saved = op.outputs
    if not op.get_attr("save"):
        _, _, h_in, saved = library().lstm_sequence(*op.inputs, reverse=op.get_attr("reverse"))
    dhs = tf.zeros_like(hs) if dhs is None else dhs
    dcs = tf.zeros_like(cs) if dcs is None else dcs
    dzs, dh0, dc0 = library().lstm_sequence_grad(dhs, dcs, saved, kernel, lengths,
                                                 reverse=op.get_attr("reverse"))
    dkernel = tf.matmul(tf.reshape(h_in, [-1, tf.shape(h_in)[-1]]),
                        tf.reshape(dzs, [-1, tf.shape(dzs)[-1]]), transpose_a=True)
    return [dzs, dh0, dc0, dkernel, None]


@tf.autograph.experimental.do_not_convert
def dropout(x: Any, rate: float, seed: Any) -> Any | None:
    """x (float32 or bfloat16, any shape), rate in [0, 1), seed int [2] -> x with each
    element kept (and divided by 1 - rate) with probability 1 - rate, else 0; the mask is
    a function of the seed and the element's position. None when the kernels are not
    available."""
    lib = _library_for(x)
    if lib is None:
        return None
    return lib.seeded_dropout(x, tf.cast(seed, tf.int64), rate=rate)


@tf.RegisterGradient("SeededDropout")
def _seeded_dropout_gradient(op: Any, dy: Any) -> list:
    """The same mask and scale applied to the gradient; none for the seed."""
    return [library().seeded_dropout(dy, op.inputs[1], rate=op.get_attr("rate")), None]


@tf.autograph.experimental.do_not_convert
def smoothed_cross_entropy(logits: Any, labels: Any, smoothing: float) -> Any | None:
    """logits [N, V] (float32 or bfloat16), labels int32 [N] -> float32 [N], each row's
    cross-entropy against (1 - smoothing) on its label plus smoothing / V everywhere,
    differentiable in the logits. None when the kernels are not available."""
    lib = _library_for(logits)
    if lib is None:
        return None
    return lib.smoothed_cross_entropy(logits, labels, smoothing=smoothing)[0]


@tf.RegisterGradient("SmoothedCrossEntropy")
def _smoothed_cross_entropy_gradient(op: Any, dloss: Any, _dlog_norm: Any) -> list:
    """upstream * (softmax - target) from the saved log-normaliser. The log_norm output
    is internal (smoothed_cross_entropy returns only the loss): no gradient flows from it."""
    grad = library().smoothed_cross_entropy_grad(
        op.inputs[0], op.inputs[1], op.outputs[1], dloss, smoothing=op.get_attr("smoothing"))
    return [grad, None]


@tf.autograph.experimental.do_not_convert
def grouped_attention(query: Any, keys: Any, memory: Any, mask: Any, rows: Any = None
                      ) -> tuple[Any, Any] | None:
    """Dot-product attention, no gradient (searches and evaluation): query [A * g, D],
    keys [B, S, D], memory [B, S, M] (one dtype, float32 or bfloat16), mask bool [B, S],
    rows int32 [A] (default: all B, A = B) -> context [A * g, M], weights [A * g, S]; query
    rows a * g .. a * g + g - 1 read stored sentence rows[a]. None when the kernels are not
    available."""
    lib = _library_for(query)
    if lib is None:
        return None
    if rows is None:
        rows = tf.range(tf.shape(keys)[0])
    return tuple(lib.grouped_attention(query, keys, memory, mask, tf.cast(rows, tf.int32)))
