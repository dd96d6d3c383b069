"""Decoding speed with the compiled kernels (translator/kernels) against the plain path,
and against the kernels without the searches' fused ones, in one run.

This machine's speed drifts by 10-20% over minutes, so the two variants are built side by
side in one process (each traced with TRANSLATOR_NATIVE set accordingly; the switch is
read when a function is traced) and timed interleaved: a trained model folder translating
Multi30k test_2016_flickr through Translator.translate, greedy and beam 5; whole passes
over the 1,000 sentences alternate between the variants (sentences/s, medians). The
"unfused" variant has every kernel but the searches' fused ones (LstmStep, ProjectTopK:
nothing packed, so the decoder step runs a matmul, LstmCell, the output matmul and
TopKLogNorm); "kernels" forces the fused step. Which of the two the product runs by
default is decided once per machine (translator.kernels.tuning); the run prints that
choice beside the measured speeds, so that one can see the default is the faster. For
training, bench/train_ablation.py turns off each kernel (and the fused Adam) alone.

Run:  TRANSLATOR_MIRROR=../shared/corpora .venv/bin/python bench/kernels_ab.py --model models/base
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from typing import Any

import flops  # imports translator first: TensorFlow starts quietly

# name -> (TRANSLATOR_NATIVE, TRANSLATOR_FUSED_STEP) while tracing
VARIANTS = {"tf-ops": ("0", "0"), "unfused": ("1", "0"), "kernels": ("1", "1")}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="trained model folder")
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5, help="decoding passes per variant")
    parser.add_argument("--contend", action="store_true",
                        help="time with a busy-loop process beside the decoding, taking CPU "
                        "time from it as a hypervisor's steal does")
    parser.add_argument("--name", default="kernels_ab", help="results file name")
    return parser.parse_args(argv)


def traced_as(variant: str, build) -> Any:
    """Calls build() (which must trace everything it will run) with the variant's switches
    in the environment (read when a search is traced)."""
    saved = {k: os.environ.get(k) for k in ("TRANSLATOR_NATIVE", "TRANSLATOR_FUSED_STEP")}
    os.environ["TRANSLATOR_NATIVE"], os.environ["TRANSLATOR_FUSED_STEP"] = VARIANTS[variant]
    try:
        return build()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def busy_loop():
    """A process spinning on one core while the body runs: the decoding's two threads then
    share the machine's two cores with it, as they do with a hypervisor that steals time."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield
    finally:
        spinner.kill()
        spinner.wait()


def decode_ab(args: argparse.Namespace) -> dict[str, Any]:
    from translator.translator import Translator

    texts = [s for s, _ in flops.multi30k("test_2016_flickr")]
    results = {}
    for beam in args.beams:
        def build() -> Any:
            translator = Translator.load(args.model)
            translator.translate(texts, beam=beam, batch_size=args.batch_size)  # traces
            return translator

        translators = {v: traced_as(v, build) for v in VARIANTS}
        speed: dict[str, list[float]] = {v: [] for v in VARIANTS}
        with busy_loop() if args.contend else contextlib.nullcontext():
            for repeat in range(args.repeats):  # each variant in turn, reversed each pass
                order = list(VARIANTS) if repeat % 2 == 0 else list(VARIANTS)[::-1]
                for variant in order:
                    start = time.perf_counter()
                    translators[variant].translate(texts, beam=beam,
                                                   batch_size=args.batch_size)
                    speed[variant].append(len(texts) / (time.perf_counter() - start))
        medians = {v: flops.median(s) for v, s in speed.items()}
        results[f"beam {beam}"] = {
            "sentences_per_s": speed, "median": medians,
            "ratio": medians["kernels"] / medians["tf-ops"],
            "fused_ratio": medians["kernels"] / medians["unfused"]}
        print(f"decoding beam {beam}, batch {args.batch_size}: TensorFlow ops "
              f"{medians['tf-ops']:.1f}, kernels without the fused step "
              f"{medians['unfused']:.1f}, kernels {medians['kernels']:.1f} sentences/s "
              f"(kernels/ops {medians['kernels'] / medians['tf-ops']:.3f}x, "
              f"fused/unfused {medians['kernels'] / medians['unfused']:.3f}x)", flush=True)
    return results


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    flops.quiet_tensorflow()
    info = flops.print_machine()
    if not info["compiled_kernels"]:
        raise SystemExit("the compiled kernels are not available here: nothing to compare")
    # the choice for the precision training picks here (that of models trained here)
    default = "kernels" if info["fused_step"] else "unfused"
    print(f"default decoder step on this machine: {default} "
          f"({info['fused_step_timing'] or 'forced by TRANSLATOR_FUSED_STEP'})")
    results: dict[str, Any] = {"benchmark": "kernels_ab", "machine": info,
                               "settings": vars(args), "default": default}
    results["decoding"] = decode_ab(args)
    for beam, figures in results["decoding"].items():
        fastest = max(figures["median"], key=figures["median"].get)
        print(f"{beam}: fastest {fastest}, default {default}"
              f"{'' if fastest == default else ' (NOT the fastest)'}")
    print(f"results: {flops.write_results(args.name, results)}")


if __name__ == "__main__":
    main()
