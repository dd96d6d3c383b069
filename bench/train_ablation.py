"""What each training-speed measure is worth: the training step as shipped against the
same step with one measure turned off, all in one process, timed interleaved.

This machine's speed drifts by 10-20% over minutes, more than any one measure is worth,
so every variant is built side by side (its switch applied while its training function
is traced) and every batch runs on every variant in turn, in a rotating order. Reported:
target tokens/s from the per-batch medians, and each variant's median per-batch time
relative to the shipped step. Peers' size, mixed bfloat16, real batches (as
bench/train_speed.py builds them).

Variants (each turns off what it names):
  shipped         everything on
  keras-adam      translator.train.optimizer.FusedAdam -> keras.optimizers.Adam
  keras-dropout   the SeededDropout kernel -> Keras' dropout
  plain-loss      the SmoothedCrossEntropy kernel -> the plain loss (TensorFlow's fused
                  softmax cross-entropy against the smoothed targets)
  tf-lstm-loop    the LstmSequence kernels -> the plain loop over time steps (tf.scan;
                  each step a MatMul and the gates' element-wise ops, differentiated by
                  TensorFlow), as without kernels
  none            all of the above: the plain path (TRANSLATOR_NATIVE=0) and Keras' Adam

Run:  TRANSLATOR_MIRROR=../shared/corpora .venv/bin/python bench/train_ablation.py
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from typing import Any

import flops  # imports translator first: TensorFlow starts quietly

# variant -> (translator.kernels.library functions that return None while tracing, Keras' Adam?)
VARIANTS: dict[str, tuple[tuple[str, ...], bool]] = {
    "shipped": ((), False),
    "keras-adam": ((), True),
    "keras-dropout": (("dropout",), False),
    "plain-loss": (("smoothed_cross_entropy",), False),
    "tf-lstm-loop": (("lstm_sequence",), False),
    "none": (("*",), True),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=30, help="timed batches")
    parser.add_argument("--repeats", type=int, default=4, help="passes over the timed batches")
    parser.add_argument("--name", default="train_ablation", help="results file name")
    return parser.parse_args(argv)


@contextlib.contextmanager
def switched_off(names: tuple[str, ...]):
    """translator.kernels.library's named functions return None (the plain operations run)
    inside the block; "*" sets TRANSLATOR_NATIVE=0 instead."""
    from translator.kernels import library as native

    saved = {name: getattr(native, name) for name in names if name != "*"}
    before = os.environ.get("TRANSLATOR_NATIVE")
    try:
        for name in saved:
            setattr(native, name, lambda *args, **kwargs: None)
        if "*" in names:
            os.environ["TRANSLATOR_NATIVE"] = "0"
        yield
    finally:
        for name, function in saved.items():
            setattr(native, name, function)
        if before is None:
            os.environ.pop("TRANSLATOR_NATIVE", None)
        else:
            os.environ["TRANSLATOR_NATIVE"] = before


def build(variant: str, config, tokenizer, batches: list[tuple], timed: list[tuple]) -> Any:
    """A compiled model for the variant, with every timed shape traced under its switch."""
    import keras
    import train_speed as ts

    off, keras_adam = VARIANTS[variant]
    with switched_off(off):
        model = ts.compiled_model(config, tokenizer)
        if keras_adam:
            cfg = config.training
            model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate,
                                                          clipnorm=cfg.clipnorm),
                          loss=model.loss, jit_compile=False)
        ts.run_steps(model, batches + [ts.reshaped_batch(batches[0])] + timed)
    return model


def main(argv: list[str] | None = None) -> None:
    import numpy as np
    import train_speed as ts

    args = parse_args(argv)
    flops.quiet_tensorflow()
    info = flops.print_machine()
    if not info["compiled_kernels"]:
        raise SystemExit("the compiled kernels are not available here: nothing to turn off")
    settings = ts.parse_args(["--sizes", "peers", "--precision", "mixed_bfloat16"])
    config = ts.make_config("peers", "mixed_bfloat16", settings)
    tokenizer = flops.bench_tokenizer(config.tokenizer.vocab_size)
    batches = ts.real_batches(tokenizer, config, 10 + args.steps, None)
    warmup, timed = batches[:10], batches[10:]
    variants = ["shipped"] + [v for v in args.variants if v != "shipped"]
    models = {}
    for variant in variants:
        print(f"building {variant} ...", flush=True)
        models[variant] = build(variant, config, tokenizer, warmup, timed)
    seconds = {v: np.zeros((args.repeats, len(timed))) for v in variants}
    for repeat in range(args.repeats):
        for i, (x, y) in enumerate(timed):
            shift = (repeat * len(timed) + i) % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                start = time.perf_counter()
                models[variant].train_on_batch(x, y)
                seconds[variant][repeat, i] = time.perf_counter() - start
    tokens = ts.batch_lengths(timed)["target_tokens"]
    results: dict[str, Any] = {"benchmark": "train_ablation", "machine": info,
                               "settings": vars(args), "variants": {}}
    print(f"\n{'variant':15s} {'tok/s':>8s} {'shipped is':>11s}")
    for variant in variants:
        speed = tokens / float(np.median(seconds[variant], 0).sum())
        ratio = float(np.median(seconds[variant] / seconds["shipped"]))
        results["variants"][variant] = {"target_tokens_per_s": speed,
                                        "shipped_speedup": ratio,
                                        "seconds": seconds[variant].tolist()}
        print(f"{variant:15s} {speed:8,.0f} {ratio:10.3f}x", flush=True)
    print(f"results: {flops.write_results(args.name, results)}")


if __name__ == "__main__":
    main()
