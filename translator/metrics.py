"""sacreBLEU scores (BLEU, chrF, TER) on detokenised text, with their signatures, 95%
confidence intervals by bootstrap resampling, paired significance tests and per-sentence
scores.

Bootstrap resampling and the paired tests draw from sacreBLEU's generator, seeded by
$SACREBLEU_SEED (12345 unless set; the seed is part of the signature): the same
outputs give the same intervals and p-values.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from sacrebleu.metrics import BLEU, CHRF, TER
from sacrebleu.metrics.base import Metric

BOOTSTRAP = 1000  # resamples for a confidence interval and for the paired bootstrap test
RANDOMISATION = 10000  # trials of the approximate randomisation test


@dataclass(frozen=True)
class Score:
    name: str
    score: float
    signature: str
    # with bootstrap resampling: the resamples' mean and the 95% interval's half-width
    mean: float | None = None
    ci: float | None = None

    def __str__(self) -> str:
        interval = f" (95% CI {self.mean - self.ci:.2f}-{self.mean + self.ci:.2f})" \
            if self.ci is not None else ""
        return f"{self.name} = {self.score:.2f}{interval}  ({self.signature})"

    def to_dict(self) -> dict:
        """name, score, signature; mean, ci and the interval where there was a bootstrap."""
        if self.ci is None:
            return {"name": self.name, "score": self.score, "signature": self.signature}
        return {**asdict(self), "interval": [self.mean - self.ci, self.mean + self.ci]}


def bleu_tokenizer(language: str) -> str:
    """sacreBLEU's tokenizer for a target language: 'zh' for Chinese, '13a' otherwise."""
    return "zh" if language.lower() in ("zh", "cmn", "zho", "chinese") else "13a"


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
    if name == "ter":
        return TER(asian_support=tokenize == "zh")
    raise ValueError(f"unknown metric {name!r}: bleu, bleu_lowercase, chrf or ter")


METRICS = ("bleu", "bleu_lowercase", "chrf", "ter")


def _check(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[list, list]:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    return list(hypotheses), [list(references)]


def corpus_score(name: str, hypotheses: Sequence[str], references: Sequence[str],
                 language: str = "en", bootstrap: int = 0) -> Score:
    """One corpus-level score; with bootstrap > 1, also its 95% confidence interval
    from that many resamples of the sentences."""
    hyps, refs = _check(hypotheses, references)
    scorer = metric(name, language)
    if bootstrap > 1:
        result = scorer.corpus_score(hyps, refs, n_bootstrap=bootstrap)
        return Score(result.name, result.score, str(scorer.get_signature()),
                     float(result._mean), float(result._ci))
    result = scorer.corpus_score(hyps, refs)
    return Score(result.name, result.score, str(scorer.get_signature()))


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

    test "bs": paired bootstrap resampling (Koehn 2004), "ar": approximate randomisation
    (Riezler and Maxwell 2005), both as sacreBLEU runs them for BLEU, chrF and TER.
    Returns per metric: both scores, the p-value of the other system's difference from
    this one, and the test's signature. Identical outputs are not tested (sacreBLEU
    would give them the smallest p-value: it counts only larger differences than the
    observed one, and no sample exceeds a zero difference); they get p = 1.
    """
    from sacrebleu.significance import PairedTest

    hyps, refs = _check(hypotheses, references)
    if len(other) != len(hyps):
        raise ValueError(f"{len(hyps)} hypotheses but {len(other)} lines in the other output")
    if test not in ("bs", "ar"):
        raise ValueError(f"test must be 'bs' (paired bootstrap) or 'ar', not {test!r}")
    names = ("bleu", "chrf", "ter")
    if list(other) == hyps:
        scores = {n: corpus_score(n, hyps, references, language) for n in names}
        return {n: {"this": scores[n].score, "other": scores[n].score, "p_value": 1.0,
                    "signature": "identical outputs, not tested"} for n in names}
    paired = PairedTest([("this", hyps), ("other", list(other))],
                        {n: metric(n, language) for n in names}, refs, test_type=test,
                        n_samples=BOOTSTRAP if test == "bs" else RANDOMISATION)
    signatures, results = paired()  # keyed by the scores' names (BLEU, chrF2, TER), in order
    keys = [k for k in results if k != "System"]
    return {n: {"this": results[k][0].score, "other": results[k][1].score,
                "p_value": results[k][1].p_value, "signature": str(signatures[k])}
            for n, k in zip(names, keys)}


def sentence_scores(hypotheses: Sequence[str], references: Sequence[str], language: str = "en"
                    ) -> list[dict]:
    """Per sentence: BLEU (with effective order, as sacreBLEU scores single sentences) and
    chrF."""
    hyps, refs = _check(hypotheses, references)
    sentence_bleu = BLEU(tokenize=bleu_tokenizer(language), effective_order=True)
    sentence_chrf = CHRF()
    return [{"bleu": sentence_bleu.sentence_score(h, [r]).score,
             "chrf": sentence_chrf.sentence_score(h, [r]).score} for h, r in zip(hyps, refs[0])]
