"""Decoding speed of the translator on Multi30k test_2016_flickr (English -> German).

Measures sentences/s and generated target tokens/s (EOS not counted) of greedy search
(beam 1) and beam search (default beam 5) through the real `translator.Translator`
(tokenising, length-sorted batches, the compiled search, detokenising), after one
warm-up call per search that traces it. The model is a trained model folder (--model)
or, without it, the `base` preset with random weights (such a model tends to run every
sentence to the maximum length, so its figures differ from a trained model's).

Also reported: (a) useful decoding FLOPs (encoder once per sentence; per step and
hypothesis: decoder LSTM, attention over the source, attentional layer, output
projection) over the time taken, as a share of the machine's measured matmul FLOP/s
in the model's compute dtype, measured around every round of repeats (this machine's
speed drifts by 20-50% within minutes: each repeat is set against the matmul rate of its
own minute, the mean of the measurements before and after its round, and the median of
those shares is reported); (b) the speed of a plain eager per-token loop written
here (model.encode once, model.decode_step per token, no tf.function) on a subset,
with the compiled/eager ratio measured in the same run.

Run:  TRANSLATOR_MIRROR=../shared/corpora .venv/bin/python bench/decode_speed.py
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import flops  # imports translator first: TensorFlow starts quietly

SHARE_GOAL = 0.5  # beam 5: at least half of the FLOP-bound limit
EAGER_GOAL = 10.0  # beam 5: at least 10x the eager reference loop
REFERENCE = "JoeyNMT decodes 81 sentences/s with beam 5 on such a machine"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a trained model folder (default: random weights)")
    parser.add_argument("--beams", nargs="+", type=int, default=[1, 5])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--limit", type=int, default=None,
                        help="translate only the first N test sentences (default: all 1,000)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eager-limit", type=int, default=100,
                        help="sentences for the eager reference loop (0: skip it)")
    parser.add_argument("--precision", default="auto",
                        choices=["auto", "float32", "mixed_bfloat16"],
                        help="training.precision of the random-weights model")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="extra config override for the random-weights model")
    parser.add_argument("--train-limit", type=int, default=None,
                        help="train the random model's tokenizer on the first N pairs")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--name", default="decode_speed", help="results file name")
    return parser.parse_args(argv)


def make_translator(args: argparse.Namespace) -> tuple[Any, str]:
    """The Translator under test and a label saying where its weights come from."""
    import keras

    from translator import config as config_lib
    from translator.model_folder import build_model
    from translator.translator import Translator

    if args.model:
        if args.sets or args.precision != "auto" or args.train_limit:
            raise SystemExit("--set, --precision and --train-limit are for the random-weights "
                             "model; a model folder brings its own")
        translator = Translator.load(args.model)
        if hasattr(translator.model, "members"):
            raise SystemExit(f"{args.model} is an ensemble: this benchmark times one model "
                             f"(--model {args.model}/members/1); the ensemble's decoding "
                             "time is in its evaluations' scores.json (translate_seconds)")
        return translator, f"trained weights ({args.model})"
    overrides = [f"training.precision={args.precision}", *flops.parse_sets(args.sets)]
    config = config_lib.load(preset="base", overrides=overrides)
    tokenizer = flops.bench_tokenizer(config.tokenizer.vocab_size, args.train_limit)
    keras.utils.set_random_seed(args.seed)
    model = build_model(config, tokenizer)
    model.build()
    label = "random weights (base preset" + (f", --set {' '.join(args.sets)})" if args.sets
                                             else ")")
    return Translator(model, tokenizer, config), label


def search_name(beam: int) -> str:
    return "greedy" if beam == 1 else f"beam {beam}"


def compiled_run(translator, texts: list[str], beam: int, batch_size: int
                 ) -> tuple[float, list[list[str]]]:
    """Seconds to translate texts through Translator.translate, and the output pieces."""
    start = time.perf_counter()
    hyps = translator.translate(texts, beam=beam, batch_size=batch_size, return_scores=True)
    seconds = time.perf_counter() - start
    return seconds, [h.tokens for h in hyps]


def max_lengths(translator, lengths: Any) -> Any:
    """The search's length limit per sentence, as Translator computes it."""
    import numpy as np

    d = translator.config.decoding
    return np.maximum(1, np.ceil(d.max_len_ratio * lengths + d.max_len_offset)).astype(np.int32)


# ---- the eager reference loop ----------------------------------------------------------


def eager_greedy(model, source: Any, limits: Any) -> list[list[int]]:
    """Greedy search, one eager decode_step per token; source int [B, S], limits [B]."""
    import numpy as np
    import tensorflow as tf

    from translator.data.tokenizer import BOS_ID, EOS_ID

    _, _, state = model.encode(tf.constant(source), training=False)
    tokens = np.full(len(source), BOS_ID, np.int32)
    out: list[list[int]] = [[] for _ in source]
    done = np.zeros(len(source), bool)
    while not done.all():
        logits, state, _ = model.decode_step(tf.constant(tokens), state)
        tokens = np.argmax(logits.numpy(), axis=-1).astype(np.int32)
        for b in np.flatnonzero(~done):
            if tokens[b] == EOS_ID:
                done[b] = True
            else:
                out[b].append(int(tokens[b]))
                done[b] = len(out[b]) >= limits[b]
    return out


def penalty(length: int, alpha: float) -> float:
    """The GNMT length penalty ((5 + length) / 6) ** alpha."""
    return ((5.0 + length) / 6.0) ** alpha


def top_candidates(total: Any, count: int) -> tuple[Any, Any]:
    """total [B, beam, V] -> flat indices and scores of each sentence's best `count`."""
    import numpy as np

    flat = total.reshape(len(total), -1)
    index = np.argpartition(-flat, count - 1, axis=1)[:, :count]
    scores = np.take_along_axis(flat, index, axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(index, order, axis=1), np.take_along_axis(scores, order, axis=1)


class Sentence:
    """One sentence's beam: alive hypotheses (token lists, log-probs) and the best finished."""

    def __init__(self, beam: int, limit: int) -> None:
        self.beam, self.limit, self.done = beam, int(limit), False
        self.hyps: list[list[int]] = [[] for _ in range(beam)]
        self.alive = [0.0] + [-math.inf] * (beam - 1)
        self.best: tuple[float, list[int]] = (-math.inf, [])

    def advance(self, index: Any, scores: Any, vocab: int, t: int, alpha: float
                ) -> tuple[list[int], list[int]]:
        """Takes step t's candidates (best first); returns parent beams and new tokens.

        As translator.search does: only the best `beam` candidates may finish (on EOS, or
        any token once the length limit is reached), the best `beam` others stay alive.
        """
        from translator.data.tokenizer import EOS_ID

        forced = t + 1 >= self.limit
        hyps, alive, parents, tokens = [], [], [], []
        for rank, (i, score) in enumerate(zip(index.tolist(), scores.tolist())):
            parent, token = divmod(i, vocab)
            if token == EOS_ID or forced:
                if rank < self.beam and score / penalty(t + 1, alpha) > self.best[0]:
                    words = self.hyps[parent] + ([] if token == EOS_ID else [token])
                    self.best = (score / penalty(t + 1, alpha), words)
            elif len(alive) < self.beam:
                hyps.append(self.hyps[parent] + [token])
                alive.append(score)
                parents.append(parent)
                tokens.append(token)
        self.hyps, self.alive = hyps, alive
        bound = max(alive[0] / penalty(t + 2, alpha), alive[0] / penalty(self.limit, alpha)
                    ) if alive else -math.inf
        self.done = forced or bound <= self.best[0]
        return parents, tokens


def eager_beam(model, source: Any, limits: Any, beam: int, alpha: float) -> list[list[int]]:
    """Beam search, one eager decode_step per token for all batch x beam rows.

    The encoder state is repeated beam times once; each step the decoder LSTM state rows
    are reordered to their parents (the memory, keys and mask are the same for every row
    of a sentence, so they need no reordering; the decoder's weights are shared by all).
    """
    import numpy as np
    import tensorflow as tf

    from translator.model import SHARED_KEYS, STATIC_KEYS
    from translator.data.tokenizer import BOS_ID, PAD_ID

    _, _, state = model.encode(tf.constant(source), training=False)
    state = {k: v if k in SHARED_KEYS else tf.nest.map_structure(
        lambda x: tf.repeat(x, beam, axis=0), v) for k, v in state.items()}
    sentences = [Sentence(beam, limit) for limit in limits]
    tokens = np.full(len(source) * beam, BOS_ID, np.int32)
    t = 0
    while not all(s.done for s in sentences):
        logits, state, _ = model.decode_step(tf.constant(tokens), state)
        log_probs = tf.nn.log_softmax(tf.cast(logits, tf.float32)).numpy()
        log_probs = log_probs.reshape(len(source), beam, -1)
        alive = np.array([s.alive + [-math.inf] * (beam - len(s.alive)) for s in sentences])
        index, scores = top_candidates(alive[:, :, None] + log_probs, 2 * beam)
        rows = np.arange(len(source) * beam)
        for b, sentence in enumerate(sentences):
            if sentence.done:
                continue
            parents, new = sentence.advance(index[b], scores[b], log_probs.shape[2], t, alpha)
            missing = beam - len(parents)
            rows[b * beam:(b + 1) * beam] = [b * beam + p for p in parents + [0] * missing]
            tokens[b * beam:(b + 1) * beam] = new + [PAD_ID] * missing
        reorder = tf.constant(rows)
        state = {k: v if k in STATIC_KEYS + SHARED_KEYS else tf.nest.map_structure(
            lambda x: tf.gather(x, reorder), v) for k, v in state.items()}
        t += 1
    return [s.best[1] for s in sentences]


def eager_run(translator, texts: list[str], beam: int, batch_size: int
              ) -> tuple[float, list[list[str]]]:
    """Seconds for the eager loop over texts (tokenising, length-sorted batches as
    Translator makes them, search), and the output pieces in input order."""
    import numpy as np

    from translator.data.pipeline import encode_sources, pad

    start = time.perf_counter()
    sources = encode_sources(translator.tokenizer, texts)
    order = np.argsort([len(s) for s in sources], kind="stable")
    out: list[list[str]] = [[] for _ in texts]
    alpha = translator.config.decoding.length_penalty
    for first in range(0, len(order), batch_size):
        batch = order[first:first + batch_size]
        source = pad([sources[i] for i in batch])
        limits = max_lengths(translator, np.array([len(sources[i]) for i in batch]))
        if beam == 1:
            ids = eager_greedy(translator.model, source, limits)
        else:
            ids = eager_beam(translator.model, source, limits, beam, alpha)
        for i, hyp in zip(batch, ids):
            out[i] = translator.tokenizer.pieces(hyp)
    return time.perf_counter() - start, out


# ---- measuring and reporting -------------------------------------------------------------


def decode_work(translator, texts: list[str], pieces: list[list[str]], beam: int
                ) -> dict[str, Any]:
    """Useful FLOPs of decoding texts into outputs of the given lengths with this beam.

    Encoder once per sentence; every step (tokens, plus the EOS step unless the length
    limit ended the sentence) runs `beam` hypotheses through the decoder step.
    """
    import numpy as np

    from translator.data.pipeline import encode_sources

    d = flops.Dims.of(translator.model)
    src = np.array([len(s) for s in encode_sources(translator.tokenizer, texts)])
    out = np.array([len(p) for p in pieces])
    forced = out >= max_lengths(translator, src)
    steps = out + ~forced
    encoder = sum(flops.encoder_flops(d, s) for s in src)
    decoder = beam * sum(n * flops.decode_step_flops(d, s) for n, s in zip(steps, src))
    return {
        "sentences": len(texts), "generated_tokens": int(out.sum()), "steps": int(steps.sum()),
        "mean_source_length": float(src.mean()), "forced_end_share": float(forced.mean()),
        "encoder_flops": encoder, "decoder_flops": decoder, "flops": encoder + decoder,
        "step_flops_per_hypothesis_at_mean_source": flops.decode_step_flops(d, src.mean()),
        "flops_per_generated_token_per_hypothesis": (encoder + decoder) / (beam * steps.sum()),
    }


def measure(translator, texts: list[str], args: argparse.Namespace
            ) -> tuple[dict[int, dict], list[float]]:
    """Median speed of each search over texts; one warm-up call each, repeats interleaved.
    Also the matmul FLOP/s measured before the first round and after every round."""
    runs: dict[int, dict[str, Any]] = {b: {"seconds": []} for b in args.beams}
    for beam in args.beams:
        print(f"warming up {search_name(beam)} (tracing) ...", flush=True)
        runs[beam]["warmup_seconds"] = compiled_run(translator, texts[:args.batch_size], beam,
                                                    args.batch_size)[0]
    dtype = translator.model.compute_dtype
    matmul = [flops.matmul_flops(dtype, args.matmul_size, 1)[0]]
    for repeat in range(args.repeats):
        for beam, run in runs.items():
            seconds, run["pieces"] = compiled_run(translator, texts, beam, args.batch_size)
            run["seconds"].append(seconds)
            print(f"  repeat {repeat + 1}: {search_name(beam)}: "
                  f"{len(texts) / seconds:,.1f} sentences/s", flush=True)
        matmul.append(flops.matmul_flops(dtype, args.matmul_size, 1)[0])
        print(f"  matmul {flops.format_si(matmul[-1], 'FLOP/s')}", flush=True)
    around = [(a + b) / 2 for a, b in zip(matmul, matmul[1:])]  # each round's own minute
    for beam, run in runs.items():
        run["work"] = decode_work(translator, texts, run.pop("pieces"), beam)
        run["sentences_per_s"] = [len(texts) / s for s in run["seconds"]]
        run["tokens_per_s"] = [run["work"]["generated_tokens"] / s for s in run["seconds"]]
        run["median_seconds"] = flops.median(run["seconds"])
        run["median_sentences_per_s"] = flops.median(run["sentences_per_s"])
        run["median_tokens_per_s"] = flops.median(run["tokens_per_s"])
        run["achieved_flops_per_s"] = run["work"]["flops"] / run["median_seconds"]
        run["share_per_repeat"] = [run["work"]["flops"] / s / m
                                   for s, m in zip(run["seconds"], around)]
        run["share_of_flop_bound"] = flops.median(run["share_per_repeat"])
    return runs, matmul


def measure_eager(translator, texts: list[str], args: argparse.Namespace) -> dict[int, dict]:
    """Compiled (Translator) and eager-loop seconds on the same texts, interleaved."""
    runs = {b: {"compiled_seconds": [], "eager_seconds": []} for b in args.beams}
    for beam in args.beams:
        eager_run(translator, texts[:2], beam, args.batch_size)  # first eager calls: set-up
    for repeat in range(args.repeats):
        for beam, run in runs.items():
            compiled, ours = compiled_run(translator, texts, beam, args.batch_size)
            eager, theirs = eager_run(translator, texts, beam, args.batch_size)
            run["compiled_seconds"].append(compiled)
            run["eager_seconds"].append(eager)
            run["identical_outputs"] = sum(a == b for a, b in zip(ours, theirs))
            print(f"  repeat {repeat + 1}: {search_name(beam)}: compiled {compiled:.2f} s, "
                  f"eager {eager:.2f} s", flush=True)
    for run in runs.values():
        run["per_repeat_ratio"] = [e / c for e, c in zip(run["eager_seconds"],
                                                         run["compiled_seconds"])]
        run["median_ratio"] = (flops.median(run["eager_seconds"])
                               / flops.median(run["compiled_seconds"]))
    return runs


def print_speed(runs: dict[int, dict], matmul: list[float], label: str) -> None:
    """The speed table: sentences/s, tokens/s, FLOPs and the share of the FLOP-bound limit
    (the median of the repeats' shares, each against the matmul rate around its round)."""
    rows = []
    for beam, run in runs.items():
        w = run["work"]
        share = run["share_of_flop_bound"]
        goal = f">= {SHARE_GOAL:.0%} share" if beam == 5 else ""
        rows.append([search_name(beam), f"{run['median_sentences_per_s']:,.1f}",
                     f"{min(run['sentences_per_s']):,.1f}-{max(run['sentences_per_s']):,.1f}",
                     f"{run['median_tokens_per_s']:,.0f}", f"{w['generated_tokens']:,}",
                     f"{w['forced_end_share']:.0%}",
                     flops.format_si(w["flops_per_generated_token_per_hypothesis"], "FLOP"),
                     flops.format_si(run["achieved_flops_per_s"], "FLOP/s"),
                     f"{100 * share:.1f}%",
                     f"{100 * min(run['share_per_repeat']):.1f}-"
                     f"{100 * max(run['share_per_repeat']):.1f}%", goal])
    print(f"\n{label}")
    flops.print_table(["search", "sent/s (median)", "range", "tok/s", "tokens", "at max len",
                       "FLOPs/tok/hyp", "achieved", "share", "share range", "goal"], rows)
    print(f"FLOP-bound limit: matmul measured around each round of repeats, "
          f"{flops.format_si(min(matmul), 'FLOP/s')}-{flops.format_si(max(matmul), 'FLOP/s')} "
          f"(median {flops.format_si(flops.median(matmul), 'FLOP/s')}); FLOPs/tok/hyp = useful "
          "matmul FLOPs (encoder amortised) per generated token (EOS step included) and "
          "hypothesis")


def print_eager(runs: dict[int, dict], count: int, batch_size: int) -> None:
    """The compiled/eager table."""
    rows = []
    for beam, run in runs.items():
        rows.append([search_name(beam),
                     f"{count / flops.median(run['compiled_seconds']):,.1f}",
                     f"{count / flops.median(run['eager_seconds']):,.1f}",
                     f"{run['median_ratio']:.1f}x", f"{run['identical_outputs']}/{count}",
                     f">= {EAGER_GOAL:.0f}x" if beam == 5 else ""])
    print(f"\ncompiled Translator vs the eager per-token loop (first {count} sentences, "
          f"batch {batch_size}, same run)")
    flops.print_table(["search", "compiled sent/s", "eager sent/s", "compiled/eager",
                       "identical", "goal"], rows)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    flops.quiet_tensorflow()
    info = flops.print_machine()
    translator, label = make_translator(args)
    texts = [s for s, _ in flops.multi30k("test_2016_flickr", args.limit)]
    dtype = translator.model.compute_dtype
    print(f"model: {label}; {translator.model.count_params():,} parameters; compute {dtype}; "
          f"{len(texts)} sentences, batch {args.batch_size}")
    if not args.model:
        print("note: random weights tend to run to the maximum length "
              "(1.5 x source + 10 tokens), so figures differ from a trained model's")
    runs, matmul = measure(translator, texts, args)
    eager = measure_eager(translator, texts[:args.eager_limit], args) if args.eager_limit else {}
    print_speed(runs, matmul, f"{label}, Multi30k test_2016_flickr en->de")
    if eager:
        print_eager(eager, len(texts[:args.eager_limit]), args.batch_size)
    print(f"\ngoals: beam 5 >= {SHARE_GOAL:.0%} of the FLOP-bound limit and >= {EAGER_GOAL:.0f}x "
          f"the eager reference loop\nreference (from the product brief, not measured here): "
          f"{REFERENCE}")
    if info["quiet_warning"]:
        print(info["quiet_warning"])
    results = {
        "benchmark": "decode_speed", "machine": info, "settings": vars(args), "weights": label,
        "model": translator.model.settings, "compute_dtype": dtype,
        "decoding": translator.config.decoding, "matmul_flops_per_s": matmul,
        "matmul_median": flops.median(matmul), "searches": runs, "eager_reference": eager,
        "goals": {"beam5_share_of_flop_bound": SHARE_GOAL, "beam5_compiled_over_eager":
                  EAGER_GOAL}, "reference_not_measured_here": REFERENCE,
    }
    print(f"results: {flops.write_results(args.name, results)}")


if __name__ == "__main__":
    main()
