"""Command-line front ends for train.py and translate.py (argument parsing only)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import sys
from collections.abc import Iterator, Sequence

from translator.files import count_lines, parse_shard, shard_lines, text_of
from translator.data.corpus import BOM, CorpusError, read_lines


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


# ---- train ------------------------------------------------------------------------------

def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train.py", description="Train a translator into a "
                                "model folder; run the same command again to resume.")
    p.add_argument("--config", help="YAML config file")
    p.add_argument("--preset", choices=["tiny", "demo", "base"], help="a preset applied first")
    p.add_argument("--corpus", help="registered corpus: multi30k, tatoeba-cmn-eng")
    p.add_argument("--src", help="source language code (e.g. en)")
    p.add_argument("--tgt", help="target language code (e.g. de)")
    for name in ("train-src", "train-tgt", "dev-src", "dev-tgt", "train-tsv", "dev-tsv"):
        p.add_argument(f"--{name}", metavar="FILE")
    p.add_argument("--mirror", metavar="DIR", help="local mirror of corpus downloads "
                   "(default: $TRANSLATOR_MIRROR)")
    p.add_argument("--output", default="models/default", help="model folder (default: %(default)s)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set training.epochs=5 (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace a different run in --output")
    p.add_argument("--init-from", metavar="MODEL", help="fine-tune: start from this model "
                   "folder's weights and tokenizer, with a fresh optimizer and schedule, on "
                   "the data this command names; its config is the starting point")
    p.add_argument("--continue", dest="more_epochs", type=int, metavar="EPOCHS",
                   help="train the run in --output (finished or stopped) for EPOCHS more "
                   "epochs, with its own config and learning rate")
    p.add_argument("--strategy", choices=["default", "mirrored", "multiworker"],
                   default="default", help="tf.distribute: one device (default), this "
                   "machine's GPUs or CPU devices (mirrored), or the workers TF_CONFIG "
                   "names (multiworker; run the same command on each)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _data_overrides(args: argparse.Namespace) -> list[str]:
    sets = []
    for flag, key in (("corpus", "corpus"), ("src", "src"), ("tgt", "tgt"), ("mirror", "mirror")):
        if getattr(args, flag):
            sets.append(f"data.{key}={getattr(args, flag)}")
    own = False
    for flag in ("train_src", "train_tgt", "dev_src", "dev_tgt", "train_tsv", "dev_tsv"):
        if getattr(args, flag):
            own = True
            sets.append(f"data.{flag}={getattr(args, flag)}")
    if own and not args.corpus:
        sets.append("data.corpus=null")
    return sets


def train_main(argv: Sequence[str] | None = None) -> int:
    args = train_parser().parse_args(argv)
    from translator import config as config_lib
    from translator.model_folder import ModelFolderError

    try:
        config = _train_config(args)
    except (config_lib.ConfigError, ModelFolderError, ValueError) as err:
        return _fail(str(err))
    from translator.train.run import train

    try:
        result = train(config, args.output, overwrite=args.overwrite,
                       verbose=0 if args.quiet else "auto",
                       more_epochs=args.more_epochs, strategy=args.strategy)
    except (ValueError, OSError) as err:  # every error of ours is a ValueError
        return _fail(str(err))
    except KeyboardInterrupt:
        return 130
    print(f"model folder: {result.folder} (best dev BLEU {result.best_dev_bleu:.2f})")
    return 0


def _train_config(args: argparse.Namespace):
    """The run's config: preset, file, flags and --set; with --init-from on top of the
    parent model's config, with --continue on top of the run's own."""
    from translator import config as config_lib
    from translator.model_folder import read_config

    overrides = _data_overrides(args) + args.set
    if args.init_from and args.more_epochs is not None:
        raise ValueError("--init-from starts a new run and --continue extends one: not both")
    if (args.init_from or args.more_epochs is not None) and args.preset:
        raise ValueError("--preset sets a model's size: with --init-from or --continue the "
                         "model's own config is the starting point")
    if args.more_epochs is not None:
        if args.more_epochs < 1:
            raise ValueError("--continue EPOCHS must be at least 1")
        return config_lib.load(args.config, None, overrides, base=read_config(args.output))
    if args.init_from:
        parent = read_config(args.init_from)
        parent.training.init_from = None  # its own parent, if any, is not this run's
        parent.training.members = 1  # one model is fine-tuned (an ensemble is refused)
        # the data is this command's (the parent's languages unless it names others)
        parent.data = config_lib.DataConfig(src=parent.data.src, tgt=parent.data.tgt)
        return config_lib.load(args.config, None,
                               overrides + [f"training.init_from={args.init_from}"],
                               base=parent)
    return config_lib.load(args.config, args.preset, overrides)


# ---- translate --------------------------------------------------------------------------

def translate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="translate.py",
        description="Translate text arguments, stdin (one sentence per line) or a file.")
    p.add_argument("text", nargs="*", help="sentences to translate (none: read stdin)")
    p.add_argument("--model", required=True, help="model folder written by train.py")
    p.add_argument("--input", "-i", metavar="FILE", help="translate this file ...")
    p.add_argument("--output", "-o", metavar="FILE", help="... into this file (atomically)")
    p.add_argument("--beam", type=int, help="beam size (1 = greedy; default from the model)")
    p.add_argument("--nbest", type=int, help="print the K best: index<TAB>score<TAB>text")
    p.add_argument("--length-penalty", type=float, help="GNMT length penalty alpha")
    p.add_argument("--max-len-ratio", type=float, help="max output length per source token")
    p.add_argument("--batch-size", type=int, help="sentences per batch")
    p.add_argument("--scores", action="store_true", help="print score<TAB>text")
    p.add_argument("--json", action="store_true", help="one JSON object per input line")
    p.add_argument("--plot-attention", metavar="PNG", help="attention heatmap of the first "
                   "sentence")
    p.add_argument("--reference", metavar="FILE", help="score the output against this file "
                   "(sacreBLEU BLEU and chrF with signatures, printed to stderr)")
    p.add_argument("--errors", choices=["strict", "replace"], default="strict",
                   help="invalid UTF-8 in the input: stop (strict) or replace and go on")
    p.add_argument("--shard", metavar="I/N", help="with --input: translate only the I-th of N "
                   "contiguous shards of the file (I from 1); the N outputs concatenated in "
                   "order are the whole file's")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _formatter(args: argparse.Namespace):
    def fmt(index: int, result) -> str:
        if args.json:
            items = result if isinstance(result, list) else [result]
            record = {"index": index, "translation": text_of(items[0])}
            if not isinstance(items[0], str):
                record["score"] = items[0].score
                if len(items) > 1:
                    record["nbest"] = [{"translation": text_of(h), "score": h.score} for h in items]
            return json.dumps(record, ensure_ascii=False)
        if isinstance(result, list):
            return "\n".join(f"{index}\t{h.score:.4f}\t{text_of(h)}" for h in result)
        if args.scores:
            return f"{result.score:.4f}\t{text_of(result)}"
        return text_of(result)
    return fmt


def _options(args: argparse.Namespace) -> dict:
    return {"beam": args.beam, "nbest": args.nbest, "length_penalty": args.length_penalty,
            "max_len_ratio": args.max_len_ratio, "batch_size": args.batch_size,
            "return_scores": args.scores or args.json}


def stdin_chunks(fd: int, max_lines: int, errors: str = "strict") -> Iterator[list[str]]:
    """Lines from fd in chunks: a chunk ends at max_lines, or as soon as no more input is
    waiting, so a person typing a line gets its translation back at once while a pipe
    is translated in full batches."""
    buffer, chunk, number = b"", [], 0
    while True:
        while b"\n" in buffer and len(chunk) < max_lines:
            line, buffer = buffer.split(b"\n", 1)
            number += 1
            chunk.append(_decode(line, number, errors))
        if chunk and (len(chunk) >= max_lines or not select.select([fd], [], [], 0)[0]):
            yield chunk
            chunk = []
            continue
        data = os.read(fd, 1 << 16)
        if not data:
            if buffer:
                chunk.append(_decode(buffer, number + 1, errors))
            if chunk:
                yield chunk
            return
        buffer += data


def _decode(raw: bytes, number: int, errors: str) -> str:
    """One stdin line as read_lines reads a file's: no "\r" at its end, no byte order mark
    at the start of the first line."""
    try:
        line = raw.decode("utf-8", errors=errors).rstrip("\r")
        return line.removeprefix(BOM) if number == 1 else line
    except UnicodeDecodeError as err:
        raise CorpusError(f"<stdin>, line {number}: invalid UTF-8 at byte {err.start}") from None


def translate_main(argv: Sequence[str] | None = None) -> int:
    args = translate_parser().parse_args(argv)
    if bool(args.input) != bool(args.output):
        return _fail("--input and --output go together")
    if args.text and args.input:
        return _fail("give sentences as arguments or --input FILE, not both")
    if args.shard and not args.input:
        return _fail("--shard splits a file: give --input FILE and --output FILE")
    from translator.model_folder import ModelFolderError
    from translator.translator import Translator

    try:
        translator = Translator.load(args.model)
        return _translate(translator, args)
    except (ModelFolderError, CorpusError, ValueError) as err:
        return _fail(str(err))
    except BrokenPipeError:
        return 0
    except OSError as err:  # e.g. no room left on the device for the output
        return _fail(str(err))
    except KeyboardInterrupt:
        return 130


def _translate(translator, args: argparse.Namespace) -> int:
    fmt, options = _formatter(args), _options(args)
    best: list[str] = []  # the best translation of each input, kept only for --reference
    sources: list[str] = []  # the first input sentence, for --plot-attention
    count = 0

    def record(index: int, result) -> str:
        nonlocal count
        count += 1
        if args.reference:
            best.append(text_of(result))
        return fmt(index, result)

    if args.input:
        # The progress bar goes to stderr: stdout stays free for pipes.
        shard = parse_shard(args.shard) if args.shard else None
        with contextlib.redirect_stdout(sys.stderr):
            translator.translate_file(args.input, args.output, errors=args.errors,
                                      progress=not args.quiet, formatter=record, shard=shard,
                                      **options)
        print(f"translated {args.input}{f' (shard {args.shard})' if shard else ''} -> "
              f"{args.output}", file=sys.stderr)
        sources = [next(iter(read_lines(args.input, errors=args.errors)), "")]
    else:
        chunks = [args.text] if args.text else stdin_chunks(
            sys.stdin.fileno(), translator.stream_chunk(options), args.errors)
        for chunk in chunks:
            sources = sources or chunk[:1]
            for result in translator.translate(chunk, **options):
                print(record(count, result))
            sys.stdout.flush()
    if args.plot_attention:
        _plot(translator, args.plot_attention, sources[0] if sources else "", options)
    if args.reference:
        lines = None
        if args.input and args.shard:  # the reference's lines of this shard
            lines = shard_lines(count_lines(args.input), parse_shard(args.shard))
        _score(translator, args.reference, best, lines)
    return 0


def _plot(translator, path: str, sentence: str, options: dict) -> None:
    from translator.plot import plot_attention

    if not sentence.strip():
        raise ValueError("--plot-attention plots the first input sentence, which is empty")
    hyp = translator.translate(sentence, **{**options, "nbest": 1, "return_attention": True})
    plot_attention(hyp, path)
    print(f"attention plot: {path}", file=sys.stderr)


def _score(translator, reference: str, outputs: list[str],
           lines: tuple[int, int] | None = None) -> None:
    from translator.metrics import bleu, chrf

    references = list(read_lines(reference))
    if lines is not None:
        references = references[lines[0]:lines[1]]
    language = translator.config.data.tgt
    print(bleu(outputs, references, language), file=sys.stderr)
    print(chrf(outputs, references), file=sys.stderr)
