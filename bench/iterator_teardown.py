"""How long dropping an epoch's training-data iterator takes, with tf.data autotuning off
(what training runs) and on.

Training calls `model.fit` once per epoch (so that a run can resume mid-epoch), and each
call makes a new iterator over translator.data.pipeline's dataset and drops it at the
epoch's end. With tf.data's autotuning on, dropping it waits for tf.data's tuning thread
to wake up, which can take tens of seconds, with both cores idle, after an iterator has
lived as long as an epoch. This benchmark feeds the real pipeline (Multi30k en-de train,
the 8k joint tokenizer, batches of 64) for --life seconds, taking one batch every
--step seconds (sleeping, like a training step that leaves the data thread alone), then
times the drop; the two settings alternate, --trials times each.

Run:  TRANSLATOR_MIRROR=../shared/corpora .venv/bin/python bench/iterator_teardown.py
"""

from __future__ import annotations

import argparse
import gc
import time

import flops  # imports translator first: TensorFlow starts quietly


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--life", type=float, default=55.0,
                        help="seconds each iterator is read (about one `base` epoch)")
    parser.add_argument("--step", type=float, default=0.1, help="seconds between batches")
    parser.add_argument("--trials", type=int, default=4, help="drops timed per setting")
    parser.add_argument("--name", default="iterator_teardown", help="results file name")
    return parser.parse_args(argv)


def drop_seconds(dataset, life: float, step: float) -> float:
    """Reads dataset for `life` seconds, then returns how long dropping the iterator takes."""
    iterator = iter(dataset)
    started = time.monotonic()
    while time.monotonic() - started < life:
        next(iterator)
        time.sleep(step)
    dropped = time.monotonic()
    del iterator
    gc.collect()
    return time.monotonic() - dropped


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import tensorflow as tf

    from translator.data.corpus import clean_pairs
    from translator.data.pipeline import TrainingBatches, encode_pairs

    info = flops.print_machine()
    pairs, _ = clean_pairs(flops.multi30k("train"))
    batches = TrainingBatches(encode_pairs(flops.bench_tokenizer(8000), pairs), 64, 1, seed=1)
    autotuned = tf.data.Options()
    autotuned.autotune.enabled = True
    settings = {"autotune off (training)": lambda: batches.dataset(0, 0),
                "autotune on": lambda: batches.dataset(0, 0).with_options(autotuned)}
    times: dict[str, list[float]] = {name: [] for name in settings}
    for trial in range(args.trials):
        order = list(settings) if trial % 2 == 0 else list(settings)[::-1]
        for name in order:
            seconds = drop_seconds(settings[name](), args.life, args.step)
            times[name].append(round(seconds, 3))
            print(f"  trial {trial + 1}: {name}: dropped in {seconds:.2f} s", flush=True)
    rows = [[name, f"{flops.median(t):.2f}", f"{max(t):.2f}", " ".join(f"{s:.2f}" for s in t)]
            for name, t in times.items()]
    flops.print_table(["setting", "median s", "max s", "each drop (s)"], rows)
    path = flops.write_results(args.name, {
        "machine": info, "life_seconds": args.life, "step_seconds": args.step,
        "trials": args.trials, "drop_seconds": times})
    print(f"results: {path}")


if __name__ == "__main__":
    main()
