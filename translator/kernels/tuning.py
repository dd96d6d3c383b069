"""Whether the searches' fused decoder step pays on this machine, measured once.

The fused step (LstmStep: an LSTM layer's product and cell in one op; ProjectTopK: the
output projection folded into each row's top k) runs on the kernels' own register-tiled
product. Where TensorFlow's matmul is faster than that product (Intel's AMX units run
oneDNN's bfloat16 matmuls; a hypervisor that takes CPU time from one of the op's two
threads stalls the other), the unfused step (TensorFlow's matmuls, then the LstmCell and
TopKLogNorm kernels) can win. So the two are timed against each other once per machine
and library, at the sizes of a 512-unit decoder for beam 5 and for greedy search, in the
model's dtype, and the result is cached beside the library (kernels-<key>.tuning.json, one
entry per dtype). TRANSLATOR_FUSED_STEP=1 or 0 forces the choice
(translator.kernels.library.fused_step).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import tensorflow as tf

from translator.kernels import cpu

# (rows, input, units, vocab): a 512-unit decoder with 256-wide embeddings and an 8k
# vocabulary at beam 5 x 256 sentences, and greedy over 256 sentences
SIZES = ((1280, 256, 512, 8000), (256, 256, 512, 8000))
REPEATS = 7


def decide(lib: Any, cache_file: Path, dtype: str) -> dict:
    """{"fused": bool, "fused_ms": [...], "unfused_ms": [...], ...} for weights of dtype
    ("float32" or "bfloat16"): from cache_file, or measured now (out of any graph being
    traced) and added to it where it can be written."""
    try:
        cached = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cached = {}
    cached = cached if isinstance(cached, dict) else {}
    entry = cached.get(dtype)
    if isinstance(entry, dict) and isinstance(entry.get("fused"), bool) and all(
            isinstance(entry.get(key), list) for key in ("fused_ms", "unfused_ms")):
        return entry
    with tf.init_scope():
        entry = measure(lib, tf.as_dtype(dtype))
    tmp = cache_file.with_suffix(f".{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps({**cached, dtype: entry}, indent=1) + "\n")
        os.replace(tmp, cache_file)
    except OSError:  # a read-only cache: timed again by the next process
        tmp.unlink(missing_ok=True)
    return entry


def measure(lib: Any, dtype: tf.DType) -> dict:
    """Median milliseconds of one decoder step in dtype, fused and unfused, at each of
    SIZES (the two timed in turn), and which is faster in sum."""
    fused_ms, unfused_ms = [], []
    for rows, inputs, units, vocab in SIZES:
        fused, unfused = _steps(lib, dtype, rows, inputs, units, vocab)
        times: dict[Any, list[float]] = {fused: [], unfused: []}
        for step in (fused, unfused):
            step().numpy()  # trace and warm up
        for _ in range(REPEATS):
            for step in (fused, unfused):
                start = time.perf_counter()
                step().numpy()
                times[step].append(1000 * (time.perf_counter() - start))
        fused_ms.append(round(statistics.median(times[fused]), 3))
        unfused_ms.append(round(statistics.median(times[unfused]), 3))
    return {"fused": sum(fused_ms) <= sum(unfused_ms), "fused_ms": fused_ms,
            "unfused_ms": unfused_ms, "sizes": [list(s) for s in SIZES], "dtype": dtype.name,
            "cpu": cpu.model()}


def _steps(lib: Any, dtype: tf.DType, rows: int, inputs: int, units: int, vocab: int):
    """The decoder step's LSTM layer and output projection with top 5, as the searches
    run them: fused on packed weights, and unfused on TensorFlow's matmuls."""
    rng = tf.random.Generator.from_seed(0)

    def normal(*shape, scale=0.05, as_dtype=dtype):
        return tf.cast(rng.normal(shape, stddev=scale), as_dtype)

    x, h, c = normal(rows, inputs, scale=1), normal(rows, units, scale=1), normal(
        rows, units, scale=1, as_dtype=tf.float32)
    stacked, bias = normal(inputs + units, 4 * units), normal(4 * units, as_dtype=tf.float32)
    table, out_bias = normal(units, vocab), normal(vocab, as_dtype=tf.float32)
    packed_gates = lib.pack_weights(stacked, layout="gates")
    packed_table = lib.pack_weights(table, layout="dense")

    @tf.function
    def fused():
        h2, _ = lib.lstm_step(x, h, c, packed_gates, bias)
        return lib.project_top_k(h2, packed_table, out_bias, k=5)[0]

    @tf.function
    def unfused():
        z = tf.matmul(tf.concat([x, h], -1), stacked) + tf.cast(bias, dtype)
        h2 = lib.lstm_cell([z], c, save=False)[0]
        logits = tf.matmul(h2, table) + tf.cast(out_bias, dtype)
        return lib.top_k_log_norm(logits, k=5)[0]

    return fused, unfused
