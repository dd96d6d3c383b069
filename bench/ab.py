"""Same-run speed A/B of this checkout against another commit: training and decoding.

The VM's speed drifts by 10-20% over minutes, so two commits are compared only in one run,
alternating: round r runs bench/train_speed.py and bench/decode_speed.py from both
checkouts, the order flipped every round (before-after, after-before, ...). Each round
gives an after/before ratio per figure; the summary is their geometric mean and their
range over the rounds. Both commits are checked out into temporary git worktrees, so the
two sides differ in nothing but their code (same paths, fresh caches, kernels built alike).

Run:  TRANSLATOR_MIRROR=../shared/corpora .venv/bin/python bench/ab.py --before 71eac7d \\
          --rounds 6 --name ab5 --decode-set model.embedding_dim=256 \\
          --decode-set model.encoder_units=128 --decode-set model.decoder_units=256 \\
          --decode-set tokenizer.vocab_size=8000

A trained model folder (--model) decodes real translations but must load in both
versions; without it both decode with the same random weights.

Each run's results file goes to bench/results/ab/<name>_{train,decode}_{before,after}_r<r>
-<cpu>.json and the summary to bench/results/<name>-<cpu>.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import flops  # imports translator first: TensorFlow starts quietly

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="the commit to compare against")
    parser.add_argument("--after", default="HEAD", help="the commit compared (default: HEAD)")
    parser.add_argument("--model", help="a model folder both versions load (decoding speed); "
                        "default: random weights of the size --decode-set gives")
    parser.add_argument("--decode-set", action="append", default=[], metavar="KEY=VALUE",
                        help="decode_speed.py --set, for both checkouts (e.g. the model size)")
    parser.add_argument("--eager-limit", type=int, default=10,
                        help="sentences of decode_speed.py's eager reference loop")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--sizes", nargs="+", default=["peers"], help="train_speed sizes")
    parser.add_argument("--precision", default="mixed_bfloat16", help="train_speed precision")
    parser.add_argument("--repeats", type=int, default=1,
                        help="repeats inside each benchmark run (the rounds repeat too)")
    parser.add_argument("--name", default="ab")
    return parser.parse_args(argv)


def figures(kind: str, result: dict) -> dict[str, float]:
    """The medians a run measured: target tokens/s per training size, sentences/s per beam."""
    if kind == "train":
        return {f"train {c['size']} tok/s": c["summary"]["median_tokens_per_s"]
                for c in result["cases"]}
    return {f"decode beam {beam} sent/s": s["median_sentences_per_s"]
            for beam, s in result["searches"].items()}


def environment(checkout: Path) -> dict[str, str]:
    """The checkout's own package first on the path (an editable install points at this
    one), its own caches (kernels built from its sources), the mirror as an absolute path."""
    env = {key: value for key, value in os.environ.items() if key != "TRANSLATOR_CACHE"}
    env["PYTHONPATH"] = str(checkout)
    if env.get("TRANSLATOR_MIRROR"):
        env["TRANSLATOR_MIRROR"] = str(Path(env["TRANSLATOR_MIRROR"]).resolve())
    probe = "import translator; print(translator.__file__)"
    imported = subprocess.run([sys.executable, "-c", probe], cwd=checkout, env=env,
                              capture_output=True, text=True, check=True)
    if not Path(imported.stdout.strip()).resolve().is_relative_to(checkout.resolve()):
        raise SystemExit(f"{checkout} would run {imported.stdout.strip()}: not its own package")
    return env


def run_once(checkout: Path, kind: str, name: str, args: argparse.Namespace,
             env: dict[str, str]) -> dict:
    """Runs one benchmark from `checkout`; returns its results, also filed under ab/."""
    script = "train_speed.py" if kind == "train" else "decode_speed.py"
    command = [sys.executable, str(checkout / "bench" / script), "--name", f"tmp/{name}",
               "--repeats", str(args.repeats)]
    if kind == "train":
        command += ["--sizes", *args.sizes, "--precision", args.precision]
    else:
        command += ["--eager-limit", str(args.eager_limit)]
        command += ["--model", str(Path(args.model).resolve())] if args.model else []
        command += [f"--set={item}" for item in args.decode_set]
    subprocess.run(command, cwd=checkout, env=env, check=True, stdout=subprocess.DEVNULL)
    produced = checkout / flops.results_path(f"tmp/{name}").relative_to(ROOT)
    filed = flops.results_path(f"ab/{name}")
    filed.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(produced, filed)
    return json.loads(filed.read_text())


def main() -> None:
    args = parse_args()
    info = flops.machine()
    temporary = Path(tempfile.mkdtemp(prefix="ab-"))
    sides = {side: temporary / side for side in ("before", "after")}
    ratios: dict[str, list[float]] = {}
    try:
        for side, checkout in sides.items():
            subprocess.run(["git", "worktree", "add", "--detach", str(checkout),
                            getattr(args, side)], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        envs = {side: environment(checkout) for side, checkout in sides.items()}
        for r in range(1, args.rounds + 1):
            order = ("before", "after") if r % 2 else ("after", "before")
            for kind in ("train", "decode"):
                measured = {side: figures(kind, run_once(sides[side], kind,
                                                         f"{args.name}_{kind}_{side}_r{r}",
                                                         args, envs[side]))
                            for side in order}
                for key, after in measured["after"].items():
                    ratios.setdefault(key, []).append(after / measured["before"][key])
                    print(f"round {r} ({' then '.join(order)}): {key}: after/before "
                          f"{ratios[key][-1]:.3f}", flush=True)
    finally:
        for checkout in sides.values():
            subprocess.run(["git", "worktree", "remove", "--force", str(checkout)], cwd=ROOT,
                           check=False, capture_output=True)
        shutil.rmtree(temporary, ignore_errors=True)
    summary = {key: {"geometric_mean": math.exp(sum(map(math.log, values)) / len(values)),
                     "rounds": values, "min": min(values), "max": max(values)}
               for key, values in ratios.items()}
    for key, s in summary.items():
        print(f"{key}: after/before {s['geometric_mean']:.3f} (rounds {s['min']:.3f}-"
              f"{s['max']:.3f})")
    flops.write_results(args.name, {
        "benchmark": "ab", "machine": info, "settings": vars(args),
        "commits": {side: subprocess.run(["git", "rev-parse", getattr(args, side)], cwd=ROOT,
                                         capture_output=True, text=True).stdout.strip()
                    for side in sides},
        "summary": summary, "steal_share": flops.run_steal(info)})


if __name__ == "__main__":
    main()
