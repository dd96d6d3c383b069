"""What a training lever is worth: train one variant, score it on the dev set, record it.

    python bench/levers.py --preset demo --name sampling-0.2 --set training.subword_alpha=0.2

runs `train.py --preset P --set ...` (Multi30k en-de unless --corpus/--src/--tgt say
otherwise) in a fresh process into a temporary folder, then translates the dev set (val)
with the configured beam, and appends one record to bench/results/levers-<cpu>.json:
the variant's settings, wall time of the whole training command (tokenizer, training,
dev evaluations, final scoring), epochs, the best epoch's dev BLEU (the search training
evaluates with) and dev BLEU / chrF with beam search. Levers are chosen on the dev set
only; the test sets are scored once, for the README, by translator.evaluate.

The record holds the steal share and the load average at the start: a variant trained
beside other work takes longer and gets fewer epochs into a time budget, so compare
wall times and time-bounded variants only from runs on an otherwise idle machine;
fixed-epoch variants compare fairly either way.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
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
    p.add_argument("--name", required=True, help="the variant's name in the results")
    p.add_argument("--preset", default="demo", choices=["tiny", "demo", "base"])
    p.add_argument("--corpus", default="multi30k")
    p.add_argument("--src", default="en")
    p.add_argument("--tgt", default="de")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, as train.py --set (repeatable)")
    p.add_argument("--keep", metavar="DIR", help="train into DIR and keep it (default: a "
                   "temporary folder, deleted afterwards)")
    p.add_argument("--trained", metavar="DIR", help="record a folder this command trained "
                   "earlier (its own wall time from run.json) instead of training")
    p.add_argument("--results", default="levers", help="results file name (default: levers)")
    return p.parse_args(argv)


def train(args: argparse.Namespace, folder: Path) -> tuple[float, list[str]]:
    """Runs train.py into folder; returns its wall time in seconds and its log lines."""
    command = [sys.executable, str(ROOT / "train.py"), "--preset", args.preset,
               "--corpus", args.corpus, "--src", args.src, "--tgt", args.tgt,
               "--output", str(folder), "--overwrite", "--quiet"]
    for item in args.set:
        command += ["--set", item]
    started = time.monotonic()
    run = subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    print(run.stdout, end="", flush=True)
    return time.monotonic() - started, run.stdout.splitlines()


def dev_scores(folder: Path) -> dict:
    """The dev set (the corpus' validation split, all of it) translated with the model's
    configured beam and length penalty."""
    from translator.data.corpus import load_splits
    from translator.metrics import evaluate
    from translator.translator import Translator

    translator = Translator.load(folder)
    data = translator.config.data
    dev = load_splits(dataclasses.replace(data, dev_limit=None)).dev
    started = time.monotonic()
    hyps = translator.translate([s for s, _ in dev])
    scores = evaluate(hyps, [t for _, t in dev], data.tgt)
    return {"sentences": len(dev), "beam": translator.config.decoding.beam,
            "length_penalty": translator.config.decoding.length_penalty,
            "bleu": round(scores["bleu"]["score"], 2), "chrf": round(scores["chrf"]["score"], 2),
            "bleu_signature": scores["bleu"]["signature"],
            "seconds": round(time.monotonic() - started, 1)}


def epochs_from_history(folder: Path) -> list[str]:
    """Per-epoch dev BLEU and learning rate from the folder's history.csv, or its members'
    one after another (for --trained, whose training log this command did not see)."""
    lines = []
    for path in [folder / "history.csv", *sorted(folder.glob("members/*/history.csv"))]:
        if path.exists():
            with open(path, newline="") as f:
                lines += [f"epoch {row['epoch']}: dev BLEU {float(row['dev_bleu']):.2f}, "
                          f"learning rate {float(row['learning_rate']):.3g}, "
                          f"{row['minutes']} min" for row in csv.DictReader(f)]
    return lines


def own_or_members(card: dict, key: str):
    """A run card's (or scores.json's) value; for an ensemble, its members' values."""
    return card[key] if key in card else [member[key] for member in card["members"]]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    info = flops.machine()
    with tempfile.TemporaryDirectory(prefix="levers-", dir=ROOT / "data") as tmp:
        folder = Path(args.keep or args.trained or Path(tmp) / "model")
        seconds, log = (None, []) if args.trained else train(args, folder)
        run = json.loads((folder / "run.json").read_text())
        if seconds is None:
            seconds = 60 * run["this_session_minutes"]
        state = json.loads((folder / "scores.json").read_text())
        config = (folder / "config.yaml").read_text()
        dev = dev_scores(folder)
    record = {
        "name": args.name, "preset": args.preset, "pair": f"{args.src}-{args.tgt}",
        "corpus": args.corpus, "sets": args.set, "wall_minutes": round(seconds / 60, 2),
        "training_minutes": run["training_minutes"], "epochs": own_or_members(run, "epochs"),
        "steps": own_or_members(run, "steps"),
        "stop_reason": own_or_members(run, "stop_reason"),
        "best_epoch": own_or_members(state, "best_epoch"),
        "dev_during_training": state.get("dev", {}).get("bleu", {}).get("score"),
        "dev": dev, "config": config,
        "dev_per_epoch": [line for line in log if line.startswith("epoch ")]
        or epochs_from_history(folder),
        "average": next((line for line in log if line.startswith("average of the last")),
                        None),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                 capture_output=True, text=True).stdout.strip(),
    }
    print(f"{args.name}: epochs {record['epochs']} in {record['wall_minutes']:.1f} min; "
          f"dev BLEU {dev['bleu']:.2f} chrF {dev['chrf']:.2f} (beam {dev['beam']})")
    record.update(steal_share=flops.run_steal(info),
                  load_average_at_start=info["load_average_at_start"],
                  cpu_model=info["cpu_model"])
    results = flops.results_path(args.results)
    history = json.loads(results.read_text()) if results.exists() else []
    history.append(record)
    results.write_text(json.dumps(history, indent=2) + "\n", encoding="utf-8")
    print(f"recorded in {results.relative_to(ROOT)}")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
