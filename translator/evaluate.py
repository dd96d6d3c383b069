"""Scores a trained model on a test set, with confidence intervals and significance.

    python -m translator.evaluate --model models/base --split test_2016_flickr
    python -m translator.evaluate --model M --src test.en --ref test.de [--beam 5]
    python -m translator.evaluate --model M --split test_2016_flickr --compare other.txt

prints, and stores in the model folder under evaluations/<name>/:

- scores.json: cased sacreBLEU on detokenised text, lowercased BLEU (as older papers
  report it), chrF and TER, each with its signature and a 95% confidence interval by
  bootstrap resampling (Chinese targets use sacreBLEU's 'zh' tokenisation); with
  --compare, a paired significance test against another system's output on the same
  sources (paired bootstrap, or approximate randomisation with --test ar);
- hypotheses.txt: the translations, one per source line;
- sentences.csv and report.html: every sentence with its BLEU and chrF, length ratio and
  repeated n-grams, worst first (translator.report).

train.py scores the test split of its corpus with the same code when training ends.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from translator import report as report_lib
from translator.io_utils import atomic_directory, atomic_write_bytes, atomic_write_json
from translator.metrics import BOOTSTRAP, Score, evaluate, paired_test

EVALUATIONS_DIR = "evaluations"


def score_outputs(sources: Sequence[str], references: Sequence[str], hypotheses: Sequence[str],
                  language: str, folder: Path | None = None, title: str = "",
                  other: Sequence[str] | None = None, test: str = "bs",
                  meta: dict | None = None) -> dict:
    """Scores hypotheses (with bootstrap intervals, and against `other` if given); with a
    folder, writes scores.json, hypotheses.txt, sentences.csv and report.html into it."""
    _check_counts(sources, references, hypotheses, other)
    result = {**(meta or {}), "sentences": len(sources), "language": language,
              **evaluate(hypotheses, references, language, bootstrap=BOOTSTRAP)}
    if other is not None:
        result["compare"] = {"test": test, **paired_test(hypotheses, other, references,
                                                         language, test)}
    if folder is not None:
        _write(folder, sources, references, hypotheses, language, title, result)
    return result


def _check_counts(sources, references, hypotheses=None, other=None) -> None:
    counts = {"sources": len(sources), "references": len(references)}
    if hypotheses is not None:
        counts["translations"] = len(hypotheses)
    if other is not None:
        counts["lines in the output to compare"] = len(other)
    if len(set(counts.values())) > 1:
        raise ValueError(", ".join(f"{n} {what}" for what, n in counts.items())
                         + ": the counts must be equal")


def _write(folder: Path, sources, references, hypotheses, language: str, title: str,
           result: dict) -> None:
    """Writes the evaluation folder whole (an interrupted evaluation leaves the previous
    one in place, never a mix of the two)."""
    with atomic_directory(folder) as tmp:
        text = "".join(" ".join(h.splitlines()) + "\n" for h in hypotheses)
        atomic_write_bytes(tmp / "hypotheses.txt", text.encode("utf-8"))
        rows = report_lib.rows(sources, references, hypotheses, language)
        report_lib.write_csv(tmp / "sentences.csv", rows)
        summary = {k: result[k] for k in ("bleu", "bleu_lowercase", "chrf", "ter")}
        report_lib.write_html(tmp / "report.html", rows, title, summary)
        atomic_write_json(tmp / "scores.json", result)


def evaluate_model(translator, sources: Sequence[str], references: Sequence[str], name: str,
                   folder: Path | None = None, other: Sequence[str] | None = None,
                   test: str = "bs", **options) -> dict:
    """Translates sources with the model (options as Translator.translate: beam,
    length_penalty, ...) and scores them (score_outputs); with a model folder, stores
    everything in folder/evaluations/<name>/."""
    settings = translator.config.decoding
    beam = options.get("beam") or settings.beam
    penalty = options.get("length_penalty")
    penalty = settings.length_penalty if penalty is None else penalty
    started = time.monotonic()
    hypotheses = translator.translate(list(sources), **{**options, "nbest": 1})
    meta = {"name": name, "beam": beam, "length_penalty": penalty if beam > 1 else None,
            "translate_seconds": round(time.monotonic() - started, 2)}
    target = None if folder is None else Path(folder) / EVALUATIONS_DIR / name
    title = f"{name}: {translator.config.data.src} → {translator.config.data.tgt}, " \
            f"{'greedy' if beam == 1 else f'beam {beam}'}"
    return score_outputs(sources, references, hypotheses, translator.config.data.tgt, target,
                         title, other, test, meta)


def summary_lines(result: dict) -> list[str]:
    """The scores as printed: one line per metric, then the comparison if any."""
    lines = [str(Score(s["name"], s["score"], s["signature"], s.get("interval")))
             for s in (result[m] for m in ("bleu", "bleu_lowercase", "chrf", "ter"))]
    for metric, c in result.get("compare", {}).items():
        if metric == "test":
            continue
        verdict = "significant" if c["p_value"] < 0.05 else "not significant"
        lines.append(f"{metric}: this {c['this']:.2f}, other {c['other']:.2f}: p = "
                     f"{c['p_value']:.4f}, {verdict} at p < 0.05 ({c['signature']})")
    return lines


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m translator.evaluate",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="model folder written by train.py")
    p.add_argument("--corpus", help="registered corpus (default: the model's)")
    p.add_argument("--split", help="a split of the corpus, e.g. test_2016_flickr or test")
    p.add_argument("--src", metavar="FILE", help="source sentences, one per line")
    p.add_argument("--ref", metavar="FILE", help="reference translations, one per line")
    p.add_argument("--beam", type=int, help="beam size (1 = greedy; default from the model)")
    p.add_argument("--length-penalty", type=float, help="GNMT length penalty alpha")
    p.add_argument("--compare", metavar="FILE", help="another system's output on the same "
                   "sources: test whether the difference is significant")
    p.add_argument("--test", choices=["bs", "ar"], default="bs", help="paired bootstrap "
                   "(bs, default) or approximate randomisation (ar)")
    p.add_argument("--name", help="folder name under evaluations/ (default: from the data "
                   "and beam)")
    p.add_argument("--mirror", metavar="DIR", help="local mirror of corpus downloads")
    return p


def _test_data(args: argparse.Namespace, config) -> tuple[list[str], list[str], str]:
    """(sources, references, a name) from --split or --src/--ref."""
    from translator.data.corpus import load_corpus, read_lines

    if args.split and (args.src or args.ref):
        raise ValueError("give either --split or --src and --ref, not both")
    if args.split:
        corpus = args.corpus or config.data.corpus
        if not corpus:
            raise ValueError("the model was trained on your own files: give --corpus")
        pairs = load_corpus(corpus, args.split, config.data.src, config.data.tgt,
                            args.mirror or config.data.mirror)
        return [s for s, _ in pairs], [t for _, t in pairs], f"{corpus}-{args.split}"
    if not (args.src and args.ref):
        raise ValueError("give --split (of the model's corpus) or both --src and --ref")
    sources, references = list(read_lines(args.src)), list(read_lines(args.ref))
    if len(sources) != len(references):
        raise ValueError(f"{args.src} has {len(sources)} lines but {args.ref} has "
                         f"{len(references)}: they must be parallel")
    return sources, references, Path(args.src).name.removesuffix(".gz")


def _name(args: argparse.Namespace, data: str, beam: int) -> str:
    """The evaluation's folder name: --name, or the data, search and length penalty."""
    if args.name is not None:
        if not re.fullmatch(r"[\w.-]+", args.name) or args.name in (".", ".."):
            raise ValueError(f"--name {args.name!r}: use letters, digits, '.', '-' and '_' "
                             "(it names a folder inside the model folder)")
        return args.name
    name = f"{data}-{'greedy' if beam == 1 else f'beam{beam}'}"
    return name if args.length_penalty is None else f"{name}-lp{args.length_penalty:g}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from translator.data.corpus import read_lines
    from translator.translator import Translator

    try:
        translator = Translator.load(args.model)
        sources, references, name = _test_data(args, translator.config)
        other = list(read_lines(args.compare)) if args.compare else None
        _check_counts(sources, references, other=other)  # before translating
        name = _name(args, name, args.beam or translator.config.decoding.beam)
        beam = args.beam or translator.config.decoding.beam
        result = evaluate_model(translator, sources, references, name, Path(args.model),
                                other, args.test, beam=beam,
                                length_penalty=args.length_penalty)
    except (ValueError, OSError) as err:  # every error of ours is a ValueError
        from translator.cli import _fail

        return _fail(str(err))
    print("\n".join(summary_lines(result)))
    print(f"stored in {Path(args.model) / EVALUATIONS_DIR / name}/ (scores.json, "
          "hypotheses.txt, sentences.csv, report.html)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
