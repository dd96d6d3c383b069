"""Training throughput of the translator, in target tokens per second.

Measures `model.train_on_batch` on a fixed sequence of real Multi30k en-de batches
(8k joint SentencePiece vocabulary, batches planned by translator.data.pipeline.TrainingBatches
from a seed), compiled exactly as translator/train/run.py compiles it, after a warm-up.
Target tokens are the non-pad labels, EOS included (what the loss sees). Two sizes:

  peers  embedding 256, BiLSTM encoder 256 per direction, decoder 256 (the size
         OpenNMT-tf and JoeyNMT were measured at)
  wide   embedding 256, encoder 256 per direction, decoder 512 (wider than the `base`
         preset; the records in bench/results/ label it `base`)

and two precisions (training.precision float32 and mixed_bfloat16), timed interleaved
so that their ratio is measured in the same run. Also reported: the analytic training
FLOPs per target token (3 x forward matmul FLOPs at the timed batches' real lengths),
the machine's dense matmul FLOP/s, and the achieved share of that FLOP-bound limit.

Run:  TRANSLATOR_MIRROR=../shared/corpora .venv/bin/python bench/train_speed.py
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import flops  # imports translator first: TensorFlow starts quietly

SIZES: dict[str, list[str]] = {
    "peers": ["model.embedding_dim=256", "model.encoder_units=256", "model.decoder_units=256",
              "tokenizer.vocab_size=8000", "training.batch_size=64"],
    "wide": ["model.embedding_dim=256", "model.encoder_units=256", "model.decoder_units=512",
             "model.dropout=0.3", "tokenizer.vocab_size=8000", "training.batch_size=64"],
}
PRECISIONS = ("float32", "mixed_bfloat16")
MATMUL_DTYPE = {"float32": "float32", "mixed_bfloat16": "bfloat16"}
GOAL = 7800  # target tokens/s at the peers' size
REFERENCES = "OpenNMT-tf 2.32: 3,650-4,000 tok/s; JoeyNMT: 1,875 tok/s"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--precision", nargs="+", choices=PRECISIONS, default=list(PRECISIONS),
                        help="training.precision values to time (default: both)")
    parser.add_argument("--warmup", type=int, default=10,
                        help="untimed steps first (plus one reshaped step, see reshaped_batch)")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1234, help="batch plan and weights")
    parser.add_argument("--train-limit", type=int, default=None,
                        help="use only the first N training pairs (smoke tests)")
    parser.add_argument("--set", dest="sets", action="append", default=[],
                        metavar="KEY=VALUE", help="extra config override for every size")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--matmul-repeats", type=int, default=5)
    parser.add_argument("--name", default="train_speed", help="results file name")
    return parser.parse_args(argv)


def make_config(size: str, precision: str, args: argparse.Namespace):
    """The base preset with the size's overrides, the precision and any --set."""
    from translator import config as config_lib

    overrides = SIZES[size] + [f"training.precision={precision}", f"training.seed={args.seed}"]
    return config_lib.load(preset="base", overrides=overrides + flops.parse_sets(args.sets))


def real_batches(tokenizer, config, count: int, train_limit: int | None) -> list[tuple]:
    """The first `count` batches of the seeded plan (continuing into later epochs if
    needed), as tensors ({source, target_in}, target_out)."""
    import tensorflow as tf

    from translator.data.corpus import clean_pairs
    from translator.data.pipeline import TrainingBatches, encode_pairs, make_batch

    pairs, _ = clean_pairs(flops.multi30k("train", train_limit), config.data.max_chars,
                           config.data.max_ratio)
    data = encode_pairs(tokenizer, pairs, config.data.max_tokens)
    plan = TrainingBatches(data, config.training.batch_size, config.training.bucket_width,
                           config.training.seed)
    indices: list = []
    epoch = 0
    while len(indices) < count:
        indices.extend(plan.epoch_plan(epoch))
        epoch += 1
    batches = []
    for index in indices[:count]:
        x, y = make_batch(data, index)
        batches.append(({k: tf.constant(v) for k, v in x.items()}, tf.constant(y)))
    return batches


def compiled_model(config, tokenizer):
    """A fresh model, seeded, built and compiled exactly as a training run does."""
    import keras

    from translator.train.run import compiled_model as training_model

    keras.utils.set_random_seed(config.training.seed)
    return training_model(config, tokenizer)


def reshaped_batch(batch: tuple) -> tuple:
    """The first half of a batch's rows with one more padding column: a warm-up step of
    another shape in every dimension, so that the train step (traced with reduce_retracing)
    is generalised to any batch shape before timing starts."""
    import tensorflow as tf

    x, y = batch
    rows = max(1, int(y.shape[0]) // 2)

    def cut(t):
        return tf.pad(t[:rows], [[0, 0], [0, 1]])  # PAD_ID is 0: masked everywhere

    return {k: cut(v) for k, v in x.items()}, cut(y)


def run_steps(model, batches: list[tuple]) -> float:
    """Seconds for train_on_batch over the batches (each call returns the loss: synchronous)."""
    start = time.perf_counter()
    for x, y in batches:
        model.train_on_batch(x, y)
    return time.perf_counter() - start


def batch_lengths(batches: list[tuple]) -> dict[str, Any]:
    """Real (non-pad) source and target lengths of the batches, and padding facts."""
    import numpy as np

    src = np.concatenate([(x["source"].numpy() != 0).sum(1) for x, _ in batches])
    tgt = np.concatenate([(y.numpy() != 0).sum(1) for _, y in batches])
    padded = sum(int(np.prod(y.shape)) for _, y in batches)
    return {"source": src.tolist(), "target": tgt.tolist(), "sentences": len(src),
            "target_tokens": int(tgt.sum()), "mean_source_length": float(src.mean()),
            "mean_target_length": float(tgt.mean()),
            "target_padding_share": 1 - float(tgt.sum()) / padded}


def flop_breakdown(model, lengths: dict[str, Any]) -> dict[str, Any]:
    """Training FLOPs per target token (3 x forward), with the forward breakdown."""
    forward = flops.forward_flops(flops.Dims.of(model), lengths["source"], lengths["target"])
    per_token = {k: v / lengths["target_tokens"] for k, v in forward.items()}
    return {"dims": flops.Dims.of(model), "forward_per_target_token": per_token,
            "training_per_target_token": 3 * sum(per_token.values())}


def prepare(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One case per (size, precision): its model, compiled and warmed up on real batches.

    Every model is built (seeded) before any is warmed up: keras.utils.set_random_seed
    sets TensorFlow's global seed, which makes already traced train steps trace again.
    """
    tokenizers: dict[int, Any] = {}
    cases = []
    for size in args.sizes:
        config = make_config(size, args.precision[0], args)
        vocab = config.tokenizer.vocab_size
        if vocab not in tokenizers:
            tokenizers[vocab] = flops.bench_tokenizer(vocab, args.train_limit)
        tokenizer = tokenizers[vocab]
        batches = real_batches(tokenizer, config, args.warmup + args.steps, args.train_limit)
        lengths = batch_lengths(batches[args.warmup:])
        for precision in args.precision:
            config = make_config(size, precision, args)
            cases.append({
                "size": size, "precision": precision,
                "model": compiled_model(config, tokenizer), "timed": batches[args.warmup:],
                "warmup": batches[:args.warmup] + [reshaped_batch(batches[0])],
                "config": {"model": config.to_dict()["model"],
                           "training": config.to_dict()["training"],
                           "vocab_size": tokenizer.tgt_vocab_size},
                "lengths": lengths, "seconds": [],
            })
    for case in cases:
        case["flops"] = flop_breakdown(case["model"], case["lengths"])
        print(f"{case['size']} {case['precision']}: {case['model'].count_params():,} parameters, "
              f"warming up {len(case['warmup'])} steps ...", flush=True)
        case["warmup_seconds"] = run_steps(case["model"], case.pop("warmup"))
    return cases


def time_cases(cases: list[dict[str, Any]], repeats: int) -> None:
    """Times every case once per repeat, interleaved, so ratios come from the same run."""
    for repeat in range(repeats):
        for case in cases:
            case["seconds"].append(run_steps(case["model"], case["timed"]))
            rate = case["lengths"]["target_tokens"] / case["seconds"][-1]
            print(f"  repeat {repeat + 1}: {case['size']} {case['precision']}: "
                  f"{rate:,.0f} tok/s", flush=True)


def summarise(case: dict[str, Any], matmul: dict[str, list[float]]) -> dict[str, Any]:
    """Median tok/s, achieved FLOP/s and its share of the measured matmul FLOP/s."""
    tokens = case["lengths"]["target_tokens"]
    rates = [tokens / s for s in case["seconds"]]
    rate = flops.median(rates)
    per_token = case["flops"]["training_per_target_token"]
    limit = flops.median(matmul[MATMUL_DTYPE[case["precision"]]])
    return {"tokens_per_s": rates, "median_tokens_per_s": rate,
            "training_flops_per_target_token": per_token,
            "achieved_flops_per_s": rate * per_token, "matmul_flops_per_s": limit,
            "share_of_flop_bound": rate * per_token / limit}


def print_report(cases: list[dict[str, Any]], sets: list[str]) -> None:
    """The results table, the precision ratios and the goal line."""
    rows = []
    for c in cases:
        s = c["summary"]
        rows.append([c["size"], c["precision"], f"{s['median_tokens_per_s']:,.0f}",
                     f"{min(s['tokens_per_s']):,.0f}-{max(s['tokens_per_s']):,.0f}",
                     flops.format_si(s["training_flops_per_target_token"], "FLOP"),
                     flops.format_si(s["achieved_flops_per_s"], "FLOP/s"),
                     flops.format_si(s["matmul_flops_per_s"], "FLOP/s"),
                     f"{100 * s['share_of_flop_bound']:.1f}%"])
    print()
    flops.print_table(["size", "precision", "tok/s (median)", "range", "train FLOPs/tok",
                       "achieved", "matmul peak", "share"], rows)
    for size, ratio in precision_ratios(cases).items():
        print(f"{size}: mixed_bfloat16 / float32 = {ratio['median_ratio']:.2f}x "
              f"(per repeat: {', '.join(f'{r:.2f}' for r in ratio['per_repeat'])})")
    if sets:
        print(f"NOTE: --set {' '.join(sets)} in effect: not the sizes the goal is set for")
    peers = [c["summary"]["median_tokens_per_s"] for c in cases if c["size"] == "peers"]
    best = f"{max(peers):,.0f} tok/s measured (best precision)" if peers else "not measured"
    print(f"\ngoal: >= {GOAL:,} target tok/s at the peers' size; {best}")
    print(f"reference (from the issue, not measured here): {REFERENCES} at that size "
          "on such a machine")


def precision_ratios(cases: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """mixed_bfloat16 / float32 throughput per size: ratio of medians and per repeat."""
    out = {}
    for size in dict.fromkeys(c["size"] for c in cases):
        by = {c["precision"]: c["summary"] for c in cases if c["size"] == size}
        if set(PRECISIONS) <= set(by):
            fp32, bf16 = by["float32"]["tokens_per_s"], by["mixed_bfloat16"]["tokens_per_s"]
            out[size] = {"median_ratio": flops.median(bf16) / flops.median(fp32),
                         "per_repeat": [b / f for b, f in zip(bf16, fp32)]}
    return out


def public(case: dict[str, Any]) -> dict[str, Any]:
    """A case as recorded in the JSON: no model, no tensors, no per-sentence lengths."""
    lengths = {k: v for k, v in case["lengths"].items() if k not in ("source", "target")}
    return {**{k: v for k, v in case.items() if k not in ("model", "timed")}, "lengths": lengths}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    flops.quiet_tensorflow()
    if min(args.warmup, args.steps, args.repeats) < 1:
        raise SystemExit("--warmup, --steps and --repeats must be >= 1")
    info = flops.print_machine()
    cases = prepare(args)
    time_cases(cases, args.repeats)
    print(f"measuring matmul FLOP/s ({args.matmul_size}x{args.matmul_size}) ...", flush=True)
    matmul = {MATMUL_DTYPE[p]: flops.matmul_flops(MATMUL_DTYPE[p], args.matmul_size,
                                                  args.matmul_repeats) for p in args.precision}
    for case in cases:
        case["summary"] = summarise(case, matmul)
    print_report(cases, args.sets)
    if info["quiet_warning"]:
        print(info["quiet_warning"])
    results = {
        "benchmark": "train_speed", "machine": info, "settings": vars(args), "goal": GOAL,
        "references_not_measured_here": REFERENCES, "matmul_flops_per_s": matmul,
        "matmul_median": {k: flops.median(v) for k, v in matmul.items()},
        "precision_ratios": precision_ratios(cases),
        "cases": [public(c) for c in cases],
    }
    print(f"results: {flops.write_results(args.name, results)}")


if __name__ == "__main__":
    main()
