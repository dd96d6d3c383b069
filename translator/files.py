"""Batch translation of files: streamed in chunks, order kept, written atomically."""

from __future__ import annotations

import gzip
import itertools
import re
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


# Characters that end a line for some reader (str.splitlines, editors, CSV tools): a
# translation that held one would look like two lines there. Each becomes a space.
LINE_BREAKS = re.compile("[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def one_line(text: str) -> str:
    return LINE_BREAKS.sub(" ", text)


def text_of(result) -> str:
    """The (best) translation of one input as one line, whatever form the result has:
    str, Hypothesis, or an n-best list of Hypothesis."""
    if isinstance(result, list):
        result = result[0]
    return one_line(result if isinstance(result, str) else result.text)


def plain(index: int, result) -> str:
    """The default output format: the (best) translation alone, one line per input line."""
    return text_of(result)


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N): the I-th (counting from 1) of N shards."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: write I/N, e.g. 2/8 for the second of 8 shards"
                         ) from None
    if not 1 <= index <= count:
        raise ValueError(f"--shard {text!r}: I must be between 1 and N")
    return index, count


def shard_lines(total: int, shard: tuple[int, int]) -> tuple[int, int]:
    """Lines [start, end) of shard (I, N) of a file of `total` lines: N contiguous runs in
    order, whose sizes differ by at most one line."""
    index, count = shard
    return (index - 1) * total // count, index * total // count


def translate_file(translator, src: Path | str, dst: Path | str, errors: str = "strict",
                   progress: bool = True, formatter: Callable[[int, object], str] = plain,
                   shard: tuple[int, int] | None = None, **options) -> int:
    """Translates src line by line into dst; returns the number of input lines.

    shard (I, N): only the I-th of N contiguous shards of src (shard_lines), numbered as
    in the whole file, so the N outputs concatenated in order are the whole file's output.

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
    if Path(dst).is_dir():
        raise ValueError(f"{dst} is a folder: the output must be a file")
    total = count_lines(src) if shard is not None or progress else None
    start, end = shard_lines(total, shard) if shard is not None else (0, total)
    bar = None
    if progress:
        from keras.utils import Progbar

        bar = Progbar(end - start, unit_name="line")
    written = 0
    lines = itertools.islice(read_lines(src, errors=errors), start, end)
    results = translator.translate_stream(lines, **options)
    with atomic_open(dst, "w", encoding="utf-8", newline="\n") as out:
        for index, result in enumerate(results, start):
            out.write(formatter(index, result) + "\n")
            written += 1
            if bar is not None and written % 64 == 0:
                bar.update(written)
    if bar is not None:
        bar.update(written, finalize=True)
    return written
