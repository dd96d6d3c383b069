"""Tests for translator.metrics: sacreBLEU pinned against a hand-checkable value."""

from __future__ import annotations

import pytest
import sacrebleu

from translator import metrics

HYPS = ["The dog bit the man.", "It wasn't surprising.", "The man had just bitten him."]
REFS = ["The dog bit the man.", "It was not unexpected.", "The man bit him first."]

# The BLEU of HYPS against REFS by hand. Tokenizer 13a splits off the final full stop and
# keeps "wasn't" whole:
#   hyp 1 "The dog bit the man ."          6 tokens, identical to ref 1:
#         1-grams 6/6, 2-grams 5/5, 3-grams 4/4, 4-grams 3/3
#   hyp 2 "It wasn't surprising ."         4 tokens, ref 2 "It was not unexpected ."
#         1-grams 2/4 (It, .), 2-grams 0/3, 3-grams 0/2, 4-grams 0/1
#   hyp 3 "The man had just bitten him ."  7 tokens, ref 3 "The man bit him first ."
#         1-grams 4/7 (The, man, him, .), 2-grams 1/6 (The man), 3-grams 0/5, 4-grams 0/4
# Corpus precisions 12/17, 6/14, 4/11, 3/8; hypothesis and reference lengths are both 17, so
# BP = 1 and BLEU = 100 * (12/17 * 6/14 * 4/11 * 3/8) ** (1/4) = 100 * (864/20944) ** 0.25
# = 45.0675...
EXPECTED_BLEU = 45.07


def test_bleu_matches_the_hand_computed_value():
    """translator.metrics.bleu against the derivation above (the formula to 1e-9)."""
    score = metrics.bleu(HYPS, REFS)
    assert score.name == "BLEU"
    assert round(score.score, 2) == EXPECTED_BLEU
    assert score.score == pytest.approx(100 * (864 / 20944) ** 0.25, abs=1e-9)


def test_identical_output_scores_100():
    assert metrics.bleu(REFS, REFS).score == pytest.approx(100.0)
    assert metrics.chrf(REFS, REFS).score == pytest.approx(100.0)
    assert metrics.ter(REFS, REFS).score == pytest.approx(0.0)


def test_signature_names_tokenizer_case_and_version():
    signature = metrics.bleu(HYPS, REFS).signature
    assert "tok:13a" in signature
    assert "case:mixed" in signature
    assert f"version:{sacrebleu.__version__}" in signature
    assert "nrefs:1" in signature


def test_score_prints_with_two_decimals_and_signature():
    score = metrics.bleu(HYPS, REFS)
    assert str(score) == f"BLEU = 45.07  ({score.signature})"
    assert score.to_dict() == {"name": "BLEU", "score": score.score, "signature": score.signature}


@pytest.mark.parametrize("language", ["zh", "ZH", "cmn", "zho", "chinese"])
def test_chinese_uses_the_zh_tokenizer(language):
    assert metrics.bleu_tokenizer(language) == "zh"
    assert "tok:zh" in metrics.bleu(["我爱你。"], ["我爱你。"], language).signature


@pytest.mark.parametrize("language", ["en", "de", "fr", "cs"])
def test_other_languages_use_13a(language):
    assert metrics.bleu_tokenizer(language) == "13a"


def test_chinese_bleu_scores_characters_not_unsegmented_strings():
    # With 13a each unsegmented sentence is one token, so a one-character error scores 0;
    # with tok:zh every character is a token and the score is high.
    hyps, refs = ["我们明天去公园散步。"], ["我们明天去公园跑步。"]
    assert metrics.bleu(hyps, refs, "zh").score > 50
    assert metrics.bleu(hyps, refs, "en").score < 1
    assert "asian:yes" in metrics.ter(hyps, refs, "zh").signature


def test_lowercase_changes_the_score_on_a_case_only_difference():
    hyps = ["the dog bit the man.", "it was not unexpected."]
    refs = ["The dog bit the man.", "It was not unexpected."]
    cased = metrics.bleu(hyps, refs)
    lowercased = metrics.bleu(hyps, refs, lowercase=True)
    assert cased.score < 80
    assert lowercased.score == pytest.approx(100.0)
    assert "case:lc" in lowercased.signature and "case:mixed" in cased.signature


@pytest.mark.parametrize("metric", [metrics.bleu, metrics.chrf, metrics.ter])
def test_mismatched_lengths_raise_value_error(metric):
    with pytest.raises(ValueError, match="3 hypotheses but 2 references"):
        metric(HYPS, REFS[:2])


def test_evaluate_mismatched_lengths_raise_value_error():
    with pytest.raises(ValueError, match="2 hypotheses but 3 references"):
        metrics.evaluate(HYPS[:2], REFS, "en")


def test_evaluate_returns_all_scores_with_signatures():
    result = metrics.evaluate(HYPS, REFS, "en")
    assert set(result) == {"bleu", "bleu_lowercase", "chrf", "ter"}
    for name, entry in result.items():
        assert set(entry) == {"name", "score", "signature"}, name
        assert isinstance(entry["score"], float)
        assert f"version:{sacrebleu.__version__}" in entry["signature"], name
    assert round(result["bleu"]["score"], 2) == EXPECTED_BLEU
    assert "case:mixed" in result["bleu"]["signature"]
    assert "case:lc" in result["bleu_lowercase"]["signature"]
    assert result["chrf"]["name"] == "chrF2"
    assert result["ter"]["name"] == "TER"
    assert result["chrf"]["score"] == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score)
    assert result["ter"]["score"] == pytest.approx(sacrebleu.corpus_ter(HYPS, [REFS]).score)


def test_evaluate_chinese_uses_tok_zh():
    result = metrics.evaluate(["我爱你。"], ["我爱你。"], "zh")
    assert "tok:zh" in result["bleu"]["signature"]
    assert "tok:zh" in result["bleu_lowercase"]["signature"]
    assert result["bleu"]["score"] == pytest.approx(100.0)
