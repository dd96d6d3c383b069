"""Known corpora, the local mirror, reading parallel text, cleaning and splits.

A corpus file is looked up in this order: the cache (``data/corpora/`` in a checkout; see
translator.paths), the local mirror (``--mirror DIR`` or ``$TRANSLATOR_MIRROR``), then its
official URL.
Every file is checked against its sha256 before it is used.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import urllib.request
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from translator.io_utils import atomic_path
from translator.paths import corpus_cache

Pair = tuple[str, str]

MULTI30K_URL = "https://github.com/multi30k/dataset/raw/master/data/task1/raw/{name}"
TATOEBA_URL = "https://www.manythings.org/anki/cmn-eng.zip"


@dataclass(frozen=True)
class CorpusFile:
    """One file of a corpus: where it comes from and what its bytes must hash to."""

    name: str
    url: str
    sha256: str
    zip_member: str | None = None  # the official download is a zip holding this member
    text_sha256: str | None = None  # sha256 of the uncompressed text, for re-gzipped downloads


@dataclass(frozen=True)
class Corpus:
    name: str
    languages: tuple[str, ...]
    splits: tuple[str, ...]
    files: dict[str, CorpusFile]
    licence: str


_MULTI30K_SHA = {
    "train.cs.gz": "a65adb8b32e3bc664f21ecba7a6e7f6950fd1f405e135f7c312faabdb6255077",
    "train.de.gz": "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6",
    "train.en.gz": "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
    "train.fr.gz": "622e75069e9f4c577425c4f277116ce66e63a2401c0a2312d90073cb12379a3c",
    "val.cs.gz": "b63226e05c4bd5dd6a42897d74b86a1b9d2c31498252c572b1ea7f7996927fcc",
    "val.de.gz": "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a",
    "val.en.gz": "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
    "val.fr.gz": "ca3106f1a72390591d25f6c45cb4cd39dec4cd3f123e099748a3ce5256c160e9",
    "test_2016_flickr.cs.gz": "200a4a74cc9560f051924abb9803be008d1908d77f747e9141aeb86dfd2797f1",
    "test_2016_flickr.de.gz": "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8",
    "test_2016_flickr.en.gz": "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
    "test_2016_flickr.fr.gz": "6d326e188d259fb1d04ac19eae3af956559b3a0b93d7635e56c90987c40c8b90",
}

CORPORA: dict[str, Corpus] = {
    "multi30k": Corpus(
        name="multi30k",
        languages=("en", "de", "fr", "cs"),
        splits=("train", "val", "test_2016_flickr"),
        files={n: CorpusFile(n, MULTI30K_URL.format(name=n), s) for n, s in _MULTI30K_SHA.items()},
        licence="Multi30k: research use; Flickr30k images' captions (Elliott et al. 2016)",
    ),
    "tatoeba-cmn-eng": Corpus(
        name="tatoeba-cmn-eng",
        languages=("en", "zh"),
        splits=("train", "dev", "test"),
        files={
            "cmn.txt.gz": CorpusFile(
                "cmn.txt.gz",
                TATOEBA_URL,
                "d2b1e6807d9bb4426f821416f2c475a553f75526108dd645ee07bd1067877ba4",
                zip_member="cmn.txt",
                text_sha256="616cf5e3e1d575083852c4ab9937a271a2782337e245244b3ba6aad505287241",
            )
        },
        licence="CC-BY 2.0 (France), tatoeba.org; keep the attribution column",
    ),
}

# Tatoeba has no official split: these many English sentences (with all their
# Chinese translations) are held out for dev and for test. See split_by_source().
TATOEBA_HELD_OUT = 1000
TATOEBA_SPLIT_SEED = "tatoeba-cmn-eng-v1"


class CorpusError(ValueError):
    """A corpus or data file is missing, corrupt, or malformed."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_mirror() -> Path | None:
    value = os.environ.get("TRANSLATOR_MIRROR")
    return Path(value) if value else None


def get_corpus(name: str) -> Corpus:
    if name not in CORPORA:
        raise CorpusError(f"unknown corpus {name!r}; known corpora: {', '.join(CORPORA)}")
    return CORPORA[name]


def fetch_file(
    corpus: str,
    filename: str,
    mirror: Path | str | None = None,
    cache_dir: Path | str | None = None,
) -> Path:
    """Returns the path of a verified copy of one corpus file in the cache, fetching if needed."""
    spec = get_corpus(corpus).files.get(filename)
    if spec is None:
        raise CorpusError(f"corpus {corpus!r} has no file {filename!r}")
    target = Path(cache_dir or corpus_cache()) / corpus / filename
    if target.exists():
        _verify(target, spec, f"cached file {target}")
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    mirror = Path(mirror) if mirror is not None else default_mirror()
    if mirror is not None and (mirror / corpus / filename).exists():
        source = mirror / corpus / filename
        _verify(source, spec, f"mirror file {source}")
        _atomic_copy(source, target)
        return target
    _download(spec, target)
    return target


def _verify(path: Path, spec: CorpusFile, what: str) -> None:
    actual = sha256_of(path)
    if actual == spec.sha256:
        return
    if spec.text_sha256:
        try:
            with gzip.open(path, "rb") as f:
                if hashlib.sha256(f.read()).hexdigest() == spec.text_sha256:
                    return
        except (OSError, EOFError):
            pass  # not a readable gzip file: reported as a mismatch below
    raise CorpusError(
        f"checksum mismatch for {what}: sha256 {actual}, expected {spec.sha256}; "
        "the file was not used (delete it or fix the mirror)"
    )


def _atomic_copy(source: Path, target: Path) -> None:
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def _download(spec: CorpusFile, target: Path) -> None:
    """Downloads spec.url into target (gzipping a zip member), verifying before the rename."""
    from keras.utils import Progbar

    try:
        print(f"downloading {spec.url}")
        with urllib.request.urlopen(spec.url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            bar, data = Progbar(total, unit_name="byte"), io.BytesIO()
            for block in iter(lambda: response.read(1 << 16), b""):
                data.write(block)
                bar.add(len(block))
        raw = data.getvalue()
        if spec.zip_member:
            with zipfile.ZipFile(io.BytesIO(raw)) as archive:
                raw = gzip.compress(archive.read(spec.zip_member), mtime=0)
        with atomic_path(target) as tmp:
            tmp.write_bytes(raw)
            _verify(tmp, spec, f"download of {spec.url}")  # a mismatch never gets renamed
    except OSError as err:
        raise CorpusError(f"could not download {spec.url}: {err}; use --mirror DIR") from err


def read_lines(path: Path | str, errors: str = "strict") -> Iterator[str]:
    """Yields the lines of a plain or gzipped UTF-8 file without their line ends.

    Invalid UTF-8 raises CorpusError naming the file and the 1-based line number,
    unless errors="replace".
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
