"""Reading parallel text (aligned files, TSV, the registered corpora), cleaning it, and
the train / dev / test splits. translator.data.registry fetches the registered corpora's
files."""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from translator.data.registry import (TATOEBA_HELD_OUT, TATOEBA_SPLIT_SEED, CorpusError,
                                      fetch_file, get_corpus, sha256_of)

Pair = tuple[str, str]
BOM = "\ufeff"


def read_lines(path: Path | str, errors: str = "strict") -> Iterator[str]:
    """Yields the lines of a plain or gzipped UTF-8 file without their line ends.

    Lines end at "\n" only (a "\r" before it is dropped): Unicode's other line
    separators (U+2028, U+0085, form feed, ...) stay inside their line, so line numbers are
    those of `wc -l`. A byte order mark at the start of the file is dropped. Invalid UTF-8
    raises CorpusError naming the file and the 1-based line number, unless errors="replace".
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    if not path.exists():
        raise CorpusError(f"{path}: no such file")
    with opener(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8", errors=errors)
            except UnicodeDecodeError as err:
                raise CorpusError(
                    f"{path}, line {number}: invalid UTF-8 at byte {err.start} ({err.reason})"
                ) from None
            if number == 1:
                line = line.removeprefix(BOM)
            yield line.rstrip("\r\n")


def read_parallel(src_path: Path | str, tgt_path: Path | str) -> list[Pair]:
    """Reads two aligned files; different line counts raise an error naming both."""
    src = list(read_lines(src_path))
    tgt = list(read_lines(tgt_path))
    if len(src) != len(tgt):
        raise CorpusError(
            f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}; "
            "parallel files must have one sentence per line, aligned"
        )
    return list(zip(src, tgt))


def read_tsv(path: Path | str) -> list[Pair]:
    """Reads `source<TAB>target[<TAB>anything]` lines (extra columns, e.g. attribution, ignored)."""
    pairs = []
    for number, line in enumerate(read_lines(path), start=1):
        fields = line.split("\t")
        if len(fields) < 2:
            raise CorpusError(f"{path}, line {number}: expected source<TAB>target, found no tab")
        pairs.append((fields[0], fields[1]))
    return pairs


def load_corpus(
    name: str,
    split: str,
    src: str,
    tgt: str,
    mirror: Path | str | None = None,
    cache_dir: Path | str | None = None,
) -> list[Pair]:
    """Returns the (source, target) pairs of one split of a registered corpus."""
    corpus = get_corpus(name)
    for lang in (src, tgt):
        if lang not in corpus.languages:
            raise CorpusError(
                f"corpus {name!r} has no language {lang!r}; it has {', '.join(corpus.languages)}"
            )
    if src == tgt:
        raise CorpusError(f"source and target language are both {src!r}")
    if split not in corpus.splits:
        raise CorpusError(
            f"corpus {name!r} has no split {split!r}; it has {', '.join(corpus.splits)}"
        )
    if name == "tatoeba-cmn-eng":
        en_zh = read_tsv(fetch_file(name, "cmn.txt.gz", mirror, cache_dir))
        chosen = split_by_source(en_zh)[split]
        return chosen if src == "en" else [(z, e) for e, z in chosen]
    files = [fetch_file(name, f"{split}.{lang}.gz", mirror, cache_dir) for lang in (src, tgt)]
    return read_parallel(*files)


def split_by_source(
    pairs: Sequence[Pair], held_out: int = TATOEBA_HELD_OUT, seed: str = TATOEBA_SPLIT_SEED
) -> dict[str, list[Pair]]:
    """Deterministic train/dev/test split grouped by source sentence.

    Distinct source sentences are ordered by sha256(seed + sentence); the first
    `held_out` go to test, the next `held_out` to dev, the rest to train, each with
    all its lines. So no source sentence is in two splits, and the split does not
    depend on file order. Lines keep their file order within each split.
    """
    unique = sorted(
        {s for s, _ in pairs}, key=lambda s: hashlib.sha256((seed + s).encode()).digest()
    )
    if len(unique) < 3 * held_out:
        raise CorpusError(f"only {len(unique)} distinct sentences; cannot hold out 2 x {held_out}")
    test, dev = set(unique[:held_out]), set(unique[held_out : 2 * held_out])
    splits: dict[str, list[Pair]] = {"train": [], "dev": [], "test": []}
    for pair in pairs:
        name = "test" if pair[0] in test else "dev" if pair[0] in dev else "train"
        splits[name].append(pair)
    return splits


@dataclass
class CleanReport:
    kept: int = 0
    empty: int = 0
    too_long: int = 0
    bad_ratio: int = 0

    @property
    def dropped(self) -> int:
        return self.empty + self.too_long + self.bad_ratio

    def __str__(self) -> str:
        return (
            f"kept {self.kept} pairs, dropped {self.dropped} "
            f"({self.empty} empty, {self.too_long} longer than the limit, "
            f"{self.bad_ratio} beyond the length ratio)"
        )


def clean_pairs(
    pairs: Sequence[Pair], max_chars: int = 1000, max_ratio: float = 9.0
) -> tuple[list[Pair], CleanReport]:
    """Drops empty pairs, over-long pairs and pairs whose lengths differ too much.

    For training data only: evaluation data is never filtered. Lengths are in
    characters (so the rule works for unsegmented scripts such as Chinese); the
    ratio is (longer + 1) / (shorter + 1).
    """
    kept, report = [], CleanReport()
    for src, tgt in pairs:
        src, tgt = src.strip(), tgt.strip()
        if not src or not tgt:
            report.empty += 1
        elif max(len(src), len(tgt)) > max_chars:
            report.too_long += 1
        elif (max(len(src), len(tgt)) + 1) / (min(len(src), len(tgt)) + 1) > max_ratio:
            report.bad_ratio += 1
        else:
            kept.append((src, tgt))
    report.kept = len(kept)
    return kept, report


@dataclass
class DataSplits:
    """Pairs for a run: train (cleaned), dev and test (never filtered); files for the run card."""

    train: list[Pair]
    dev: list[Pair]
    test: list[Pair]
    clean_report: CleanReport
    files: dict[str, str]  # path -> sha256 of every file read


def load_splits(data) -> DataSplits:
    """Reads the data a DataConfig names. A registered corpus gives its own dev and test
    splits (Multi30k: val and test_2016_flickr); with your own files, dev is optional and
    a missing dev set is taken as the last 500 training pairs."""
    files: dict[str, str] = {}
    if data.train_tsv or data.train_src:
        train = _read_user(data.train_tsv, data.train_src, data.train_tgt, files)
        dev = _read_user(data.dev_tsv, data.dev_src, data.dev_tgt, files)
        if (data.dev_tsv or data.dev_src) and not any(s.strip() for s, _ in dev):
            named = data.dev_tsv or f"{data.dev_src} and {data.dev_tgt}"
            raise CorpusError(f"the dev set {named} is empty")
        if not dev:
            if len(train) < 1000:
                raise CorpusError(f"only {len(train)} training pairs and no dev set: give "
                                  "--dev-src/--dev-tgt or --dev-tsv (or at least 1,000 pairs, "
                                  "of which the last 500 become the dev set)")
            train, dev = train[:-500], train[-500:]
        test: list[Pair] = []
    else:
        corpus = get_corpus(data.corpus)
        dev_split, test_split = corpus.splits[1], corpus.splits[2]
        train, dev, test = (load_corpus(data.corpus, s, data.src, data.tgt, data.mirror)
                            for s in ("train", dev_split, test_split))
        for name, spec in corpus.files.items():
            if corpus.name != "multi30k" or name.split(".")[1] in (data.src, data.tgt):
                files[f"{corpus.name}/{name}"] = spec.sha256  # verified when fetched
    if data.train_limit:
        train = train[: data.train_limit]
    if data.dev_limit:
        dev = dev[: data.dev_limit]
    train, report = clean_pairs(train, data.max_chars, data.max_ratio)
    if not train:
        named = data.train_tsv or (data.train_src and f"{data.train_src} and {data.train_tgt}")
        raise CorpusError(f"no training pairs to learn from in {named or data.corpus}: "
                          f"{report}")
    return DataSplits(train, dev, test, report, files)


def _read_user(tsv: str | None, src: str | None, tgt: str | None, files: dict) -> list[Pair]:
    if tsv:
        pairs = read_tsv(tsv)
        files[tsv] = sha256_of(Path(tsv))
        return pairs
    if src and tgt:
        pairs = read_parallel(src, tgt)
        files[src], files[tgt] = sha256_of(Path(src)), sha256_of(Path(tgt))
        return pairs
    return []
