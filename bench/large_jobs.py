"""Memory on large jobs: peak resident memory of translate.py on files of growing size, and
of train.py on Multi30k and on Multi30k repeated ten times.

    python bench/large_jobs.py translate --model models/demo --lines 10000 100000 1000000
    python bench/large_jobs.py train --repeat 1 10

`translate` writes files of real sentences (Multi30k's English training side, repeated
until the file has N lines) and runs `translate.py --input F --output O` on each in a
fresh process; `train` writes the training pairs repeated R times as your own files and
runs `train.py` on them (the `demo` preset's model, for --minutes of training: enough for
the data, the tokenizer and the batches to be built in full, and for training to reach
its steady state). Each process's peak resident set size comes from the kernel's own
account (wait4's ru_maxrss), so nothing samples and nothing is missed. Flat memory means
the peak does not grow with the input. Results: bench/results/large_jobs-<cpu>.json.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import flops  # imports translator first: TensorFlow starts quietly

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="job", required=True)
    t = sub.add_parser("translate", help="translate.py on files of growing size")
    t.add_argument("--model", required=True, help="a model folder")
    t.add_argument("--lines", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    t.add_argument("--beam", type=int, default=1, help="search (default: greedy, the fastest)")
    r = sub.add_parser("train", help="train.py on the training data repeated")
    r.add_argument("--repeat", type=int, nargs="+", default=[1, 10])
    r.add_argument("--minutes", type=float, default=3.0, help="training time of each run")
    return p.parse_args(argv)


def peak_rss(command: list[str], **kwargs) -> tuple[float, float]:
    """Runs command; returns (its peak resident memory in MiB, wall seconds). Exit 0 or
    raises with its stderr."""
    start = time.monotonic()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, **kwargs)
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{stderr.decode(errors='replace')}")
    return usage.ru_maxrss / 1024, time.monotonic() - start  # Linux counts KiB


def sentences() -> list[str]:
    return [en for en, _ in flops.multi30k("train")]


def repeated_file(path: Path, lines: list[str], count: int) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for i in range(count):
            f.write(lines[i % len(lines)] + "\n")
    return path


def translate_job(args: argparse.Namespace, folder: Path) -> list[dict]:
    real, rows = sentences(), []
    for count in args.lines:
        src = repeated_file(folder / f"in-{count}.en", real, count)
        dst = folder / f"out-{count}.de"
        mib, seconds = peak_rss([sys.executable, "translate.py", "--model", args.model,
                                 "--quiet", "--beam", str(args.beam), "--input", str(src),
                                 "--output", str(dst)])
        written = sum(1 for _ in open(dst, encoding="utf-8"))
        assert written == count, f"{dst} has {written} lines, not {count}"
        rows.append({"lines": count, "peak_mib": round(mib, 1), "seconds": round(seconds, 1),
                     "lines_per_second": round(count / seconds, 1)})
        print(f"translate {count:>9,} lines: peak {mib:,.0f} MiB, {seconds:,.0f} s", flush=True)
        src.unlink()
        dst.unlink()
    return rows


def train_job(args: argparse.Namespace, folder: Path) -> list[dict]:
    pairs, rows = flops.multi30k("train"), []
    for times in args.repeat:
        src = repeated_file(folder / f"train-{times}.en", [s for s, _ in pairs], times * len(pairs))
        tgt = repeated_file(folder / f"train-{times}.de", [t for _, t in pairs], times * len(pairs))
        dev = flops.multi30k("val")
        dev_src = repeated_file(folder / "dev.en", [s for s, _ in dev], len(dev))
        dev_tgt = repeated_file(folder / "dev.de", [t for _, t in dev], len(dev))
        mib, seconds = peak_rss([
            sys.executable, "train.py", "--preset", "demo", "--quiet", "--output",
            str(folder / f"model-{times}"), "--train-src", str(src), "--train-tgt", str(tgt),
            "--dev-src", str(dev_src), "--dev-tgt", str(dev_tgt),
            "--set", f"training.max_minutes={args.minutes}", "--set", "data.dev_limit=300"])
        rows.append({"repeat": times, "training_pairs": times * len(pairs),
                     "peak_mib": round(mib, 1), "seconds": round(seconds, 1)})
        print(f"train on {times * len(pairs):>9,} pairs ({times}x Multi30k): peak {mib:,.0f} "
              f"MiB, {seconds:,.0f} s", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    info = flops.print_machine()
    with tempfile.TemporaryDirectory(dir=ROOT / "data", prefix=".large-jobs-") as tmp:
        rows = (translate_job if args.job == "translate" else train_job)(args, Path(tmp))
    path = flops.write_results(f"large_jobs-{args.job}", {
        "machine": info, "args": vars(args), "runs": rows})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
