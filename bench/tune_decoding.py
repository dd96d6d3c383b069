"""Beam size and length penalty, tuned on the dev set of a trained model.

    python bench/tune_decoding.py --model models/base

translates the model's dev split (Multi30k: val, all 1,014 sentences) with every beam
size and length penalty of the grid, prints dev BLEU and chrF for each, and records them
in bench/results/tune_decoding-<cpu>.json (one entry per model, replaced when rerun).
The test sets play no part: choose on dev, then score test once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import flops  # imports translator first: TensorFlow starts quietly


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model folder")
    p.add_argument("--beams", type=int, nargs="+", default=[1, 3, 5, 8, 12])
    p.add_argument("--penalties", type=float, nargs="+", default=[0.0, 0.6, 1.0, 1.4, 2.0])
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from translator.data.corpus import load_splits
    from translator.metrics import evaluate
    from translator.translator import Translator

    args = parse_args(argv)
    info = flops.machine()
    translator = Translator.load(args.model)
    data = translator.config.data
    dev = load_splits(dataclasses.replace(data, dev_limit=None)).dev
    sources, references = [s for s, _ in dev], [t for _, t in dev]
    grid = []
    for beam in args.beams:
        for penalty in args.penalties if beam > 1 else [0.0]:
            started = time.monotonic()
            hyps = translator.translate(sources, beam=beam, length_penalty=penalty)
            seconds = time.monotonic() - started
            scores = evaluate(hyps, references, data.tgt)
            grid.append({"beam": beam, "length_penalty": penalty,
                         "bleu": round(scores["bleu"]["score"], 2),
                         "chrf": round(scores["chrf"]["score"], 2), "seconds": round(seconds, 2)})
            print(f"beam {beam:2d}  length penalty {penalty:.1f}:  dev BLEU {grid[-1]['bleu']:.2f}"
                  f"  chrF {grid[-1]['chrf']:.2f}  ({seconds:.1f} s)", flush=True)
    best = max(grid, key=lambda g: (g["bleu"], -g["beam"]))
    print(f"best on dev: beam {best['beam']}, length penalty {best['length_penalty']} "
          f"(BLEU {best['bleu']:.2f}); the model's setting: beam "
          f"{translator.config.decoding.beam}, length penalty "
          f"{translator.config.decoding.length_penalty}")
    steal = flops.run_steal(info)
    results = flops.results_path("tune_decoding")
    entries = json.loads(results.read_text()) if results.exists() else {}
    entries[Path(args.model).name] = {
        "model": str(args.model), "dev_sentences": len(dev), "signature":
        scores["bleu"]["signature"], "grid": grid, "best": best,
        "steal_share": steal, "cpu_model": info["cpu_model"]}
    results.write_text(json.dumps(entries, indent=2) + "\n", encoding="utf-8")
    print(f"recorded in {results}")


if __name__ == "__main__":
    main()
