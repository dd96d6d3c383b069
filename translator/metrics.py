"""sacreBLEU scores (BLEU, chrF, TER) on detokenised text, with their signatures, 95%
confidence intervals by bootstrap resampling, paired significance tests and per-sentence
scores.

Resampling works on sacreBLEU's per-sentence sufficient statistics (n-gram matches,
character n-gram counts, edits), summed over the drawn sentences and scored as sacreBLEU
scores a corpus. Draws are seeded by $SACREBLEU_SEED (12345 unless set), as sacreBLEU's
own resampling is, and the seed is in the signature: the same outputs give the same
intervals and p-values.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sacrebleu.metrics import BLEU, CHRF, TER
from sacrebleu.metrics.base import Metric

BOOTSTRAP = 1000  # resamples for a confidence interval and for the paired bootstrap test
RANDOMISATION = 10000  # trials of the approximate randomisation test


@dataclass(frozen=True)
class Score:
    name: str
    score: float
    signature: str
    interval: tuple[float, float] | None = None  # 95%, from bootstrap resampling

    def __str__(self) -> str:
        interval = (f" (95% CI {self.interval[0]:.2f}-{self.interval[1]:.2f})"
                    if self.interval else "")
        return f"{self.name} = {self.score:.2f}{interval}  ({self.signature})"

    def to_dict(self) -> dict:
        """name, score, signature, and the interval where there was a bootstrap."""
        out = {"name": self.name, "score": self.score, "signature": self.signature}
        return {**out, "interval": list(self.interval)} if self.interval else out


def bleu_tokenizer(language: str) -> str:
    """sacreBLEU's tokenizer for a target language: 'zh' for Chinese (zh, zh-CN, zh_Hant,
    cmn, ...), '13a' otherwise."""
    primary = language.lower().replace("_", "-").split("-")[0]
    return "zh" if primary in ("zh", "cmn", "zho", "chinese") else "13a"


def metric(name: str, language: str = "en") -> Metric:
    """A sacreBLEU metric by name: bleu (cased), bleu_lowercase, chrf or ter, set up for
    the target language (Chinese: BLEU's 'zh' tokenisation, TER's Asian support)."""
    tokenize = bleu_tokenizer(language)
    if name == "bleu":
        return BLEU(tokenize=tokenize)
    if name == "bleu_lowercase":
        return BLEU(tokenize=tokenize, lowercase=True)
    if name == "chrf":
        return CHRF()
    if name == "ter":  # sacreBLEU splits Chinese characters only when it normalises
        chinese = tokenize == "zh"
        return TER(normalized=chinese, asian_support=chinese)
    raise ValueError(f"unknown metric {name!r}: bleu, bleu_lowercase, chrf or ter")


METRICS = ("bleu", "bleu_lowercase", "chrf", "ter")


def _check(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[list, list]:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    return list(hypotheses), [list(references)]


def corpus_score(name: str, hypotheses: Sequence[str], references: Sequence[str],
                 language: str = "en", bootstrap: int = 0) -> Score:
    """One corpus-level score; with bootstrap > 1, also its 95% confidence interval: the
    2.5th and 97.5th percentiles of the scores of that many resamples of the sentences."""
    hyps, refs = _check(hypotheses, references)
    scorer = metric(name, language)
    label = "BLEU (lowercased)" if name == "bleu_lowercase" else None
    if bootstrap <= 1:
        result = scorer.corpus_score(hyps, refs)
        return Score(label or result.name, result.score, str(scorer.get_signature()))
    stats = _statistics(scorer, hyps, refs)
    result = scorer._compute_score_from_stats(list(stats.sum(0)))
    draws = _rng().integers(len(hyps), size=(bootstrap, len(hyps)))
    scores = [_score(scorer, stats[d].sum(0)) for d in draws]
    low, high = np.percentile(scores, [2.5, 97.5])
    return Score(label or result.name, result.score, _signature(scorer, f"bs:{bootstrap}"),
                 (float(low), float(high)))


def _statistics(scorer: Metric, hypotheses: list[str], references: list[list[str]]
                ) -> np.ndarray:
    """sacreBLEU's sufficient statistics per sentence: float64 [sentences, k]."""
    return np.asarray(scorer._extract_corpus_statistics(hypotheses, references), np.float64)


def _score(scorer: Metric, summed: np.ndarray) -> float:
    return scorer._compute_score_from_stats(list(summed)).score


def _seed() -> int:
    return int(os.environ.get("SACREBLEU_SEED", "12345"))


def _rng() -> np.random.Generator:
    return np.random.default_rng(_seed())


def _signature(scorer: Metric, resampling: str) -> str:
    """The metric's signature with the resampling and its seed after nrefs, as sacreBLEU
    writes them (e.g. nrefs:1|bs:1000|seed:12345|case:mixed|...)."""
    first, _, rest = str(scorer.get_signature()).partition("|")
    return f"{first}|{resampling}|seed:{_seed()}|{rest}"


def bleu(hypotheses: Sequence[str], references: Sequence[str], language: str = "en",
         lowercase: bool = False) -> Score:
    """Corpus BLEU of detokenised, cased (unless lowercase) text against one reference each."""
    return corpus_score("bleu_lowercase" if lowercase else "bleu", hypotheses, references,
                        language)


def chrf(hypotheses: Sequence[str], references: Sequence[str]) -> Score:
    return corpus_score("chrf", hypotheses, references)


def ter(hypotheses: Sequence[str], references: Sequence[str], language: str = "en") -> Score:
    return corpus_score("ter", hypotheses, references, language)


def evaluate(hypotheses: Sequence[str], references: Sequence[str], language: str,
             bootstrap: int = 0) -> dict:
    """BLEU (cased), BLEU (lowercased, for older papers), chrF and TER, each with its
    signature (and, with bootstrap > 1, its 95% confidence interval)."""
    return {name: corpus_score(name, hypotheses, references, language, bootstrap).to_dict()
            for name in METRICS}


def paired_test(hypotheses: Sequence[str], other: Sequence[str], references: Sequence[str],
                language: str, test: str = "bs") -> dict:
    """Is the difference between two systems' outputs on the same sources significant?

    test "bs": paired bootstrap resampling (Koehn 2004): both systems are scored on the
    same resamples of the sentences, and p is the share of resamples whose difference,
    centred on the resamples' mean, is at least the observed one. "ar": approximate
    randomisation (Riezler and Maxwell 2005): each trial swaps the two systems' outputs of
    a random half of the sentences, and p is the share of trials whose difference is at
    least the observed one. Both as sacreBLEU runs them, except that a trial that ties
    the observed difference counts (sacreBLEU counts only larger ones, which makes two
    systems that differ in a sentence or two, or not at all, look significant).
    p = (count + 1) / (trials + 1). Returns per metric (bleu, chrf, ter): both scores, p,
    and the signature.
    """
    hyps, refs = _check(hypotheses, references)
    if len(other) != len(hyps):
        raise ValueError(f"{len(hyps)} hypotheses but {len(other)} lines in the other output")
    if test not in ("bs", "ar"):
        raise ValueError(f"test must be 'bs' (paired bootstrap) or 'ar', not {test!r}")
    trials = BOOTSTRAP if test == "bs" else RANDOMISATION
    out = {}
    for name in ("bleu", "chrf", "ter"):
        scorer = metric(name, language)
        this, that = _statistics(scorer, hyps, refs), _statistics(scorer, list(other), refs)
        observed = abs(_score(scorer, this.sum(0)) - _score(scorer, that.sum(0)))
        differences = (_bootstrap_differences if test == "bs" else _randomised_differences)(
            scorer, this, that, trials)
        count = int(np.sum(differences >= observed - 1e-9 * max(1.0, observed)))
        out[name] = {"this": _score(scorer, this.sum(0)), "other": _score(scorer, that.sum(0)),
                     "p_value": (count + 1) / (trials + 1),
                     "signature": _signature(scorer, f"{test}:{trials}")}
    return out


def _bootstrap_differences(scorer, this: np.ndarray, that: np.ndarray, trials: int):
    draws = _rng().integers(len(this), size=(trials, len(this)))
    differences = np.abs([_score(scorer, this[d].sum(0)) - _score(scorer, that[d].sum(0))
                          for d in draws])
    return differences - differences.mean()


def _randomised_differences(scorer, this: np.ndarray, that: np.ndarray, trials: int):
    swap = _rng().integers(2, size=(trials, len(this))).astype(np.float64)
    first = swap @ that + (1 - swap) @ this
    second = swap @ this + (1 - swap) @ that
    return np.abs([_score(scorer, a) - _score(scorer, b) for a, b in zip(first, second)])


def sentence_scores(hypotheses: Sequence[str], references: Sequence[str], language: str = "en"
                    ) -> list[dict]:
    """Per sentence: BLEU (with effective order, as sacreBLEU scores single sentences) and
    chrF."""
    hyps, refs = _check(hypotheses, references)
    sentence_bleu = BLEU(tokenize=bleu_tokenizer(language), effective_order=True)
    sentence_chrf = CHRF()
    return [{"bleu": sentence_bleu.sentence_score(h, [r]).score,
             "chrf": sentence_chrf.sentence_score(h, [r]).score} for h, r in zip(hyps, refs[0])]
