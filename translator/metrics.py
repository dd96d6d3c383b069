"""sacreBLEU scores (BLEU, chrF, TER) on detokenised text, with their signatures."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from sacrebleu.metrics import BLEU, CHRF, TER


@dataclass(frozen=True)
class Score:
    name: str
    score: float
    signature: str

    def __str__(self) -> str:
        return f"{self.name} = {self.score:.2f}  ({self.signature})"

    def to_dict(self) -> dict:
        return asdict(self)


def bleu_tokenizer(language: str) -> str:
    """sacreBLEU's tokenizer for a target language: 'zh' for Chinese, '13a' otherwise."""
    return "zh" if language.lower() in ("zh", "cmn", "zho", "chinese") else "13a"


def _check(hypotheses: Sequence[str], references: Sequence[str]) -> tuple[list, list]:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    return list(hypotheses), [list(references)]


def bleu(hypotheses: Sequence[str], references: Sequence[str], language: str = "en",
         lowercase: bool = False) -> Score:
    """Corpus BLEU of detokenised, cased (unless lowercase) text against one reference each."""
    hyps, refs = _check(hypotheses, references)
    metric = BLEU(tokenize=bleu_tokenizer(language), lowercase=lowercase)
    result = metric.corpus_score(hyps, refs)
    return Score("BLEU", result.score, str(metric.get_signature()))


def chrf(hypotheses: Sequence[str], references: Sequence[str]) -> Score:
    hyps, refs = _check(hypotheses, references)
    metric = CHRF()
    return Score("chrF2", metric.corpus_score(hyps, refs).score, str(metric.get_signature()))


def ter(hypotheses: Sequence[str], references: Sequence[str], language: str = "en") -> Score:
    hyps, refs = _check(hypotheses, references)
    metric = TER(asian_support=bleu_tokenizer(language) == "zh")
    return Score("TER", metric.corpus_score(hyps, refs).score, str(metric.get_signature()))


def evaluate(hypotheses: Sequence[str], references: Sequence[str], language: str) -> dict:
    """BLEU (cased), BLEU (lowercased, for older papers), chrF and TER, each with its signature."""
    return {
        "bleu": bleu(hypotheses, references, language).to_dict(),
        "bleu_lowercase": bleu(hypotheses, references, language, lowercase=True).to_dict(),
        "chrf": chrf(hypotheses, references).to_dict(),
        "ter": ter(hypotheses, references, language).to_dict(),
    }
