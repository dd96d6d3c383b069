"""Shared helpers of the benchmarks: analytic FLOP counts, measured matmul FLOP/s,
machine facts, the Multi30k data and the cached benchmark tokenizer, results files.

FLOP counts are for matrix multiplications only (2 FLOPs per multiply-add); element-wise
work (LSTM gate non-linearities, softmax, masking, embedding look-ups) is not counted,
so "share of the FLOP-bound limit" is achieved matmul FLOP/s over the machine's dense
matmul FLOP/s in the same precision.
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from translator.kernels import cpu

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
TMP_DIR = RESULTS_DIR / "tmp"  # git-ignored: cached tokenizer models


# ---- analytic FLOPs ---------------------------------------------------------------------


@dataclass(frozen=True)
class Dims:
    """The sizes of a Seq2Seq model that its FLOPs depend on."""

    vocab: int
    embedding: int
    encoder_units: int  # per direction of the bidirectional first layer
    encoder_layers: int
    decoder_units: int
    decoder_layers: int
    attention: str  # dot | general | additive
    input_feeding: bool
    tie_embeddings: bool

    @classmethod
    def of(cls, model: Any) -> Dims:
        """Reads the sizes from a translator.model.Seq2Seq (its `settings`)."""
        s = model.settings
        return cls(s["tgt_vocab_size"], s["embedding_dim"], s["encoder_units"],
                   s["encoder_layers"], s["decoder_units"], s["decoder_layers"],
                   s["attention"], s["input_feeding"], s["tie_embeddings"])

    @property
    def memory(self) -> int:
        """Encoder memory width (both directions)."""
        return 2 * self.encoder_units

    @property
    def attentional(self) -> int:
        """Width of the attentional vector (the embedding width when embeddings are tied)."""
        return self.embedding if self.tie_embeddings else self.decoder_units


def lstm_macs(inputs: int, units: int) -> int:
    """Multiply-adds of one LSTM step: four gates over [input, hidden]."""
    return 4 * units * (inputs + units)


def flop_components(d: Dims) -> dict[str, tuple[str, float]]:
    """Forward FLOPs of each matmul, with what it is paid per.

    Returns name -> (unit, FLOPs) where unit is "source token", "target token",
    "pair" (one target position x one source position) or "sentence".
    """
    enc = 2 * lstm_macs(d.embedding, d.encoder_units)  # two directions
    enc += (d.encoder_layers - 1) * lstm_macs(d.memory, d.memory)
    dec_input = d.embedding + (d.attentional if d.input_feeding else 0)
    dec = lstm_macs(dec_input, d.decoder_units)
    dec += (d.decoder_layers - 1) * lstm_macs(d.decoder_units, d.decoder_units)
    key = 0 if d.attention == "dot" else d.memory * d.decoder_units
    score = d.memory if d.attention == "dot" else d.decoder_units
    query = d.decoder_units ** 2 if d.attention == "additive" else 0
    bridge = 2 * d.memory * d.decoder_units * d.decoder_layers
    macs = {
        "encoder LSTM": ("source token", enc),
        "attention key projection": ("source token", key),
        "bridge": ("sentence", bridge),
        "decoder LSTM": ("target token", dec),
        "attention query projection": ("target token", query),
        "attention scores + context": ("pair", score + d.memory),
        "attentional layer": ("target token", (d.memory + d.decoder_units) * d.attentional),
        "output projection": ("target token", d.attentional * d.vocab),
    }
    return {name: (unit, 2.0 * m) for name, (unit, m) in macs.items() if m}


def forward_flops(d: Dims, source_lengths: Sequence[int], target_lengths: Sequence[int]
                  ) -> dict[str, float]:
    """Forward FLOPs per component of teacher-forced sentences of the given real lengths."""
    counts = {
        "source token": float(sum(source_lengths)),
        "target token": float(sum(target_lengths)),
        "pair": float(sum(s * t for s, t in zip(source_lengths, target_lengths))),
        "sentence": float(len(source_lengths)),
    }
    return {name: flops * counts[unit] for name, (unit, flops) in flop_components(d).items()}


def decode_step_flops(d: Dims, source_length: float) -> float:
    """Forward FLOPs of one decoder step of one hypothesis over a source of that length."""
    total = 0.0
    for unit, flops in flop_components(d).values():
        if unit == "target token":
            total += flops
        elif unit == "pair":
            total += flops * source_length
    return total


def encoder_flops(d: Dims, source_length: float) -> float:
    """Forward FLOPs paid once per sentence: encoder, key projection, bridge."""
    total = 0.0
    for unit, flops in flop_components(d).values():
        if unit == "source token":
            total += flops * source_length
        elif unit == "sentence":
            total += flops
    return total


# ---- measuring ----------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def matmul_flops(dtype: str, size: int = 2048, repeats: int = 5, seconds: float = 1.0
                 ) -> list[float]:
    """Measured FLOP/s of tf.matmul on two size x size matrices of `dtype`, per repeat.

    Each repeat runs enough back-to-back matmuls to take about `seconds` (CPU eager ops
    are synchronous; .numpy() forces completion all the same).
    """
    import tensorflow as tf

    a = tf.random.normal([size, size], dtype=tf.float32)
    a, b = tf.cast(a, dtype), tf.cast(tf.transpose(a), dtype)
    tf.matmul(a, b).numpy()  # warm-up: oneDNN primitive creation
    start = time.perf_counter()
    tf.matmul(a, b).numpy()
    iterations = max(1, int(seconds / max(time.perf_counter() - start, 1e-6)))
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iterations):
            c = tf.matmul(a, b)
        c.numpy()
        rates.append(2.0 * size ** 3 * iterations / (time.perf_counter() - start))
    return rates


def machine() -> dict[str, Any]:
    """Platform, CPU count and model, load average, library versions, thread settings."""
    import keras
    import numpy as np
    import tensorflow as tf

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu.model(),
        "cpu_flags": cpu.notable_features(),
        "load_average_at_start": list(os.getloadavg()),
        "cpu_times_at_start": cpu_times(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "env": {k: os.environ[k] for k in ("TF_ENABLE_ONEDNN_OPTS", "OMP_NUM_THREADS",
                                           "TRANSLATOR_MIRROR") if k in os.environ},
    }


def cpu_times() -> list[int]:
    """The machine's total CPU time counters (/proc/stat's 'cpu' line: user, nice, system,
    idle, iowait, irq, softirq, steal, ...), in clock ticks; [] where there is none."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return []
    return [int(x) for x in first[1:]] if first and first[0] == "cpu" else []


def steal_share(start: list[int], end: list[int]) -> float | None:
    """The share of the CPU time between two cpu_times() readings that the hypervisor
    took from this VM (steal): figures measured while it is high are slow by about that
    much."""
    if len(start) < 8 or len(end) < 8:
        return None
    deltas = [b - a for a, b in zip(start, end)]
    total = sum(deltas[:8])
    return deltas[7] / total if total > 0 else None


def quiet_warning(load: float | None = None) -> str | None:
    """A warning when the 1-minute load average (now, or the one given) says something else
    is running."""
    load = os.getloadavg()[0] if load is None else load
    cpus = os.cpu_count() or 1
    if load > 0.5 * cpus:
        return (f"WARNING: load average {load:.2f} on {cpus} CPUs: the machine is not quiet; "
                "these figures are not fit to report")
    return None


def wait_until_quiet(limit_s: float = 150.0, poll_s: float = 5.0) -> None:
    """Waits (up to limit_s) while the 1-minute load average is above the quiet threshold:
    it lags, so a benchmark started just after another would be judged by the other's load
    for a minute or two although the machine is idle."""
    deadline = time.monotonic() + limit_s
    if quiet_warning() and time.monotonic() < deadline:
        print(f"load average {os.getloadavg()[0]:.2f}: waiting up to {limit_s:.0f} s for it "
              "to settle ...", flush=True)
        while quiet_warning() and time.monotonic() < deadline:
            time.sleep(poll_s)


def print_machine() -> dict[str, Any]:
    """Prints the machine line (and the not-quiet warning, if any); returns machine().
    The machine is judged quiet or not before the kernels are compiled (that build, ~25 s
    on first use, loads the CPUs itself)."""
    from translator.kernels import library as native

    wait_until_quiet()
    info = machine()
    info["quiet_warning"] = quiet_warning(info["load_average_at_start"][0])
    info["compiled_kernels"] = native.library() is not None
    info["kernels_status"] = native.status()
    from translator.model_folder import resolve_precision

    dtype = "bfloat16" if resolve_precision("auto") == "mixed_bfloat16" else "float32"
    info["fused_step"] = native.fused_step(dtype)
    info["fused_step_timing"] = native.fused_step_timing(dtype)
    step = "fused" if info["fused_step"] else "unfused"
    print(f"machine: {info['cpu_model']}, {info['cpu_count']} CPUs "
          f"({', '.join(info['cpu_flags'])}); TensorFlow {info['tensorflow']}, "
          f"Keras {info['keras']}; compiled kernels: {info['kernels_status']}"
          f"{f', searches run the {step} decoder step' if info['compiled_kernels'] else ''}")
    if info["quiet_warning"]:
        print(info["quiet_warning"])
    return info


def quiet_tensorflow() -> None:
    """Silences TensorFlow's Python-side warnings (e.g. the retracing notice while the
    warm-up traces the step for new shapes)."""
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")


def write_results(name: str, results: dict[str, Any]) -> Path:
    """Writes results as JSON to bench/results/<name>-<cpu>.json (the CPU's model name in
    lower case, e.g. kernels_ab-amd-epyc.json: figures from different CPUs side by side)
    and returns the path."""
    results = {**results, "load_average_at_end": list(os.getloadavg())}
    steal = run_steal(results.get("machine", {}))
    if steal is not None:
        results["steal_share"] = steal
    path = results_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=_jsonable) + "\n", encoding="utf-8")
    return path


def results_path(name: str) -> Path:
    """bench/results/<name>-<cpu>.json, the CPU's model name in lower case."""
    slug = re.sub(r"[^a-z0-9]+", "-", cpu.model().lower()).strip("-") or "unknown-cpu"
    return RESULTS_DIR / f"{name}-{slug}.json"


def run_steal(info: dict[str, Any]) -> float | None:
    """The steal share since machine() recorded `info`, printed; None where unknown."""
    steal = steal_share(info.get("cpu_times_at_start", []), cpu_times())
    if steal is not None:
        print(f"hypervisor steal during the run: {100 * steal:.1f}% of the CPU time")
        return round(steal, 4)
    return None


def _jsonable(value: Any) -> Any:
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


# ---- data, tokenizer, model config ---------------------------------------------------------


def multi30k(split: str, limit: int | None = None) -> list[tuple[str, str]]:
    """English-German pairs of a Multi30k split (mirror: $TRANSLATOR_MIRROR), first `limit`."""
    from translator.data.corpus import load_corpus

    pairs = load_corpus("multi30k", split, "en", "de")
    return pairs[:limit] if limit else pairs


def bench_tokenizer(vocab_size: int, train_limit: int | None = None):
    """The joint SentencePiece tokenizer trained on (cleaned) Multi30k en-de train.

    Cached under bench/results/tmp/ (git-ignored) by vocabulary size and training-pair limit.
    """
    from translator.data.corpus import clean_pairs
    from translator.data.tokenizer import Tokenizer

    folder = TMP_DIR / f"spm-multi30k-en-de-{vocab_size}-{train_limit or 'all'}"
    if (folder / "spm.model").exists():
        return Tokenizer.load(folder)
    pairs, _ = clean_pairs(multi30k("train", train_limit))
    tokenizer = Tokenizer.train([s for s, _ in pairs], [t for _, t in pairs], vocab_size)
    tokenizer.save(folder)  # atomic write
    return tokenizer


def parse_sets(items: Sequence[str]) -> list[str]:
    """Validates extra `section.key=value` config overrides (passed to config.load)."""
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--set expects section.key=value, got {item!r}")
    return list(items)


def format_si(value: float, unit: str = "") -> str:
    """1.23e9 -> '1.23 G' + unit."""
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.2f} {unit}"


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Prints a left-aligned text table (first column) with right-aligned figures."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        cells = [str(c).ljust(w) if i == 0 else str(c).rjust(w)
                 for i, (c, w) in enumerate(zip(row, widths))]
        return "  ".join(cells)

    print(line(header))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))
