"""Batch translation of files: streamed in chunks, order kept, written atomically."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

from translator.data.corpus import CorpusError, read_lines
from translator.io_utils import atomic_open


def count_lines(path: Path | str) -> int:
    """Lines in a plain or gzipped file (a last line without a newline counts)."""
    count, last = 0, b"\n"
    opener = gzip.open if Path(path).suffix == ".gz" else open
    with opener(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


def text_of(result) -> str:
    """The (best) translation of one input as one line, whatever form the result has:
    str, Hypothesis, or an n-best list of Hypothesis."""
    if isinstance(result, list):
        result = result[0]
    return (result if isinstance(result, str) else result.text).replace("\n", " ")


def plain(index: int, result) -> str:
    """The default output format: the (best) translation alone, one line per input line."""
    return text_of(result)


def translate_file(translator, src: Path | str, dst: Path | str, errors: str = "strict",
                   progress: bool = True, formatter: Callable[[int, object], str] = plain,
                   **options) -> int:
    """Translates src line by line into dst; returns the number of input lines.

    Memory stays constant: `Translator.translate_stream` takes a chunk of lines at a
    time, sorts it by length into batches and gives results back in input order. Output
    goes to a temporary file renamed to dst only when every line is done, so an
    interrupted run leaves no dst. Blank lines give blank lines (in the plain format dst
    has exactly as many lines as src). Invalid UTF-8 stops with the line number, unless
    errors="replace".
    """
    if errors not in ("strict", "replace"):
        raise ValueError(f"errors must be 'strict' or 'replace', not {errors!r}")
    if not Path(src).is_file():
        raise CorpusError(f"{src}: no such file")
    bar = None
    if progress:
        from keras.utils import Progbar

        bar = Progbar(count_lines(src), unit_name="line")
    written = 0
    results = translator.translate_stream(read_lines(src, errors=errors), **options)
    with atomic_open(dst, "w", encoding="utf-8", newline="\n") as out:
        for index, result in enumerate(results):
            out.write(formatter(index, result) + "\n")
            written += 1
            if bar is not None and written % 64 == 0:
                bar.update(written)
    if bar is not None:
        bar.update(written, finalize=True)
    return written
