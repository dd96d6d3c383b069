"""A per-sentence report of a translated test set: CSV for tools, HTML for people.

Each row: source, reference, hypothesis, sentence BLEU and chrF, the length ratio
(hypothesis tokens over reference tokens, as BLEU tokenises them) and the n-grams the
hypothesis repeats more often than the reference does (a sign of the decoder looping).
Rows come worst first (by sentence BLEU, then chrF), where the errors worth reading are.
"""

from __future__ import annotations

import csv
import functools
import html
import io
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from translator.io_utils import atomic_write_bytes
from translator.metrics import bleu_tokenizer, sentence_scores

COLUMNS = ("line", "bleu", "chrf", "length_ratio", "repeated", "source", "reference",
           "hypothesis")


def tokens(text: str, language: str) -> list[str]:
    """The text split as sacreBLEU's BLEU tokenises it for this language."""
    return _tokenizer(bleu_tokenizer(language))(text.strip()).split()


@functools.lru_cache(maxsize=None)
def _tokenizer(name: str):
    from sacrebleu.metrics import BLEU

    return BLEU(tokenize=name).tokenizer


def repeated_ngrams(hypothesis: Sequence[str], reference: Sequence[str], max_n: int = 8
                    ) -> list[str]:
    """The n-grams (2 <= n <= max_n) that occur more than once in the hypothesis and more
    often than in the reference, longest first; shorter ones inside a reported longer one
    are left out ("a man a man" reports "a man"; a repeated six-word span is reported
    once, not as its overlapping 4-grams)."""
    found: list[str] = []
    for n in range(max_n, 1, -1):
        hyp = Counter(tuple(hypothesis[i:i + n]) for i in range(len(hypothesis) - n + 1))
        ref = Counter(tuple(reference[i:i + n]) for i in range(len(reference) - n + 1))
        for gram, count in hyp.items():
            text = " ".join(gram)
            if count > max(1, ref[gram]) and not any(f" {text} " in f" {f} " for f in found):
                found.append(text)
    return found


def rows(sources: Sequence[str], references: Sequence[str], hypotheses: Sequence[str],
         language: str) -> list[dict]:
    """The report's rows, worst first (line numbers count from 1 in input order)."""
    scores = sentence_scores(hypotheses, references, language)
    out = []
    for line, (src, ref, hyp, score) in enumerate(
            zip(sources, references, hypotheses, scores), 1):
        hyp_tokens, ref_tokens = tokens(hyp, language), tokens(ref, language)
        out.append({
            "line": line, "bleu": round(score["bleu"], 2), "chrf": round(score["chrf"], 2),
            "length_ratio": round(len(hyp_tokens) / max(1, len(ref_tokens)), 3),
            "repeated": " | ".join(repeated_ngrams(hyp_tokens, ref_tokens)),
            "source": src, "reference": ref, "hypothesis": hyp,
        })
    return sorted(out, key=lambda r: (r["bleu"], r["chrf"], r["line"]))


def write_csv(path: Path, report: Sequence[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(report)
    # with a byte order mark: spreadsheet programs then read the file as UTF-8
    atomic_write_bytes(path, buffer.getvalue().encode("utf-8-sig"))


_STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 72em;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.4em; } table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #ddd; padding: .45em .6em; vertical-align: top;
         text-align: left; }
th { background: #f4f4f4; position: sticky; top: 0; }
td.n { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
tr.bad td.n:nth-child(2) { background: #fbe3e1; } tr.good td.n:nth-child(2) { background: #e3f4e1; }
.src { color: #555; } .ref { color: #225; } .hyp { font-weight: 600; }
.rep { color: #a33; font-size: .9em; } .sig { color: #666; font-size: .85em; }
"""


def _summary_html(title: str, summary: dict) -> str:
    items = "".join(
        f"<li><b>{html.escape(s['name'])} {s['score']:.2f}</b>"
        + (f" (95% CI {s['interval'][0]:.2f}&ndash;{s['interval'][1]:.2f})"
           if "interval" in s else "")
        + f" <span class='sig'>{html.escape(s['signature'])}</span></li>"
        for s in summary.values())
    return f"<h1>{html.escape(title)}</h1><ul>{items}</ul>"


def write_html(path: Path, report: Sequence[dict], title: str, summary: dict) -> None:
    """One page: the corpus scores, then a table of every sentence, worst first."""
    body = []
    for r in report:
        kind = "bad" if r["bleu"] < 10 else "good" if r["bleu"] >= 50 else ""
        repeated = (f"<div class='rep'>repeated: {html.escape(r['repeated'])}</div>"
                    if r["repeated"] else "")
        body.append(
            f"<tr class='{kind}'><td class='n'>{r['line']}</td><td class='n'>{r['bleu']:.1f}</td>"
            f"<td class='n'>{r['chrf']:.1f}</td><td class='n'>{r['length_ratio']:.2f}</td>"
            f"<td><div class='src'>{html.escape(r['source'])}</div>"
            f"<div class='ref'>{html.escape(r['reference'])}</div>"
            f"<div class='hyp'>{html.escape(r['hypothesis'])}</div>{repeated}</td></tr>")
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body>{_summary_html(title, summary)}"
        "<p>Every sentence, worst sentence BLEU first. In each row: the source (grey), the "
        "reference, and the translation (bold); repeated n-grams are flagged in red.</p>"
        "<table><thead><tr><th>line</th><th>BLEU</th><th>chrF</th><th>length</th>"
        "<th>source / reference / translation</th></tr></thead><tbody>"
        + "\n".join(body) + "</tbody></table></body></html>\n")
    atomic_write_bytes(path, page.encode("utf-8"))
