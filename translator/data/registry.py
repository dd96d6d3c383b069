"""The corpora the translator knows, and fetching their files.

A corpus file is looked up in this order: the cache (``data/corpora/`` in a checkout; see
translator.paths), the local mirror (``--mirror DIR`` or ``$TRANSLATOR_MIRROR``), then its
official URL. Every file is checked against its sha256 before it is used.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from translator.io_utils import atomic_path
from translator.paths import corpus_cache

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
