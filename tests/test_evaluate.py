"""The evaluation command: corpus scores with bootstrap intervals, paired significance
tests, the per-sentence report, and what it stores in the model folder."""

from __future__ import annotations

import csv
import json
import random
import shutil

import pytest

from translator import evaluate, metrics, report


@pytest.fixture(scope="module")
def test_pairs(multi30k_slice):
    return multi30k_slice["test"]  # the first 100 test pairs


def shuffled_words(text: str, seed: int) -> str:
    words = text.split()
    random.Random(seed).shuffle(words)
    return " ".join(words)


def test_bootstrap_interval_holds_the_score_and_is_reproducible(test_pairs):
    refs = [t for _, t in test_pairs]
    hyps = [shuffled_words(r, i) if i % 2 else r for i, r in enumerate(refs)]
    first = metrics.evaluate(hyps, refs, "de", bootstrap=metrics.BOOTSTRAP)
    assert first == metrics.evaluate(hyps, refs, "de", bootstrap=metrics.BOOTSTRAP)
    for name in metrics.METRICS:
        score = first[name]
        low, high = score["interval"]
        assert low < score["score"] < high
        assert score["signature"].startswith("nrefs:1|bs:1000|seed:12345|")
        plain = metrics.corpus_score(name, hyps, refs, "de")
        assert plain.score == pytest.approx(score["score"]) and plain.interval is None
        assert plain.signature == score["signature"].replace("bs:1000|seed:12345|", "")
    low, high = first["bleu"]["interval"]
    assert 2 < high - low < 20  # 100 sentences: an interval of several BLEU points
    assert first["bleu_lowercase"]["name"] == "BLEU (lowercased)"


def test_paired_tests_tell_a_real_difference_from_none(test_pairs):
    """The references themselves against a word-shuffled copy: significant in every metric
    under both tests. Two systems that shuffle the words differently (as bad as each other):
    not significant. A system against itself: p = 1."""
    refs = [t for _, t in test_pairs]
    shuffled = [shuffled_words(r, i) for i, r in enumerate(refs)]
    for test in ("bs", "ar"):
        result = metrics.paired_test(refs, shuffled, refs, "de", test)
        for name in ("bleu", "chrf", "ter"):
            assert result[name]["p_value"] < 0.01, (test, name)
            assert f"{test}:" in result[name]["signature"]
        assert result["bleu"]["this"] == pytest.approx(100)
        assert result["bleu"]["other"] < 50
        other_shuffle = [shuffled_words(r, 1000 + i) for i, r in enumerate(refs)]
        alike = metrics.paired_test(shuffled, other_shuffle, refs, "de", test)
        assert all(alike[n]["p_value"] > 0.05 for n in ("bleu", "chrf", "ter")), alike
        same = metrics.paired_test(shuffled, shuffled, refs, "de", test)
        assert all(same[n]["p_value"] == 1 for n in ("bleu", "chrf", "ter"))
        one_line_apart = shuffled[:-1] + [shuffled[-1] + " ."]
        close = metrics.paired_test(shuffled, one_line_apart, refs, "de", test)
        assert all(close[n]["p_value"] > 0.05 for n in ("bleu", "chrf", "ter")), close
    with pytest.raises(ValueError, match="100 hypotheses but 99 lines in the other output"):
        metrics.paired_test(refs, shuffled[:-1], refs, "de")


@pytest.mark.parametrize("hyp, ref, expected", [
    ("a man a man is running", "a man is running", ["a man"]),
    ("the dog runs on the grass on the grass .", "a dog runs on the grass .",
     ["on the grass"]),
    ("a man in a blue shirt", "a man in a blue shirt", []),  # repeated words, no n-gram
    ("a b a b", "a b a b", []),  # as often as in the reference
    ("x y x y x y", "x y", ["x y x y"]),  # the shorter repeats lie inside it
    ("von zwei anderen Frauen , die von zwei anderen Frauen", "zwei Frauen",
     ["von zwei anderen Frauen"]),  # once, not as its overlapping 2- and 3-grams
])
def test_repeated_ngrams(hyp, ref, expected):
    assert report.repeated_ngrams(hyp.split(), ref.split()) == expected


def test_report_rows_are_worst_first_with_lengths_and_repeats():
    sources = ["s1", "s2", "s3"]
    refs = ["Ein Hund läuft über die Wiese.", "Zwei Männer spielen Fußball.", "Eine Frau liest."]
    hyps = [refs[0], "Zwei Männer Männer spielen spielen Männer spielen.", "Ein Mann."]
    rows = report.rows(sources, refs, hyps, "de")
    # sentence BLEU with effective order: 15.6 (the looping line 2) < 19.7 < 100
    assert [r["line"] for r in rows] == [2, 3, 1]
    assert rows[-1]["bleu"] == pytest.approx(100) and rows[-1]["length_ratio"] == 1.0
    assert rows[0]["repeated"] == "Männer spielen" and rows[1]["repeated"] == ""
    assert rows[0]["length_ratio"] == pytest.approx(8 / 5)  # tokens: "." is one
    assert rows[1]["length_ratio"] == pytest.approx(3 / 4)


def test_chinese_scores_count_characters():
    """TER and BLEU on unsegmented Chinese: one wrong character of four, not one wrong
    sentence-long word."""
    ter = metrics.ter(["我爱你。"], ["我爱他。"], "zh-CN")
    assert ter.score == pytest.approx(25.0) and "asian:yes" in ter.signature
    assert metrics.bleu_tokenizer("zh_Hant") == "zh" == metrics.bleu_tokenizer("cmn")


def test_chinese_report_counts_characters():
    rows = report.rows(["I love you."], ["我爱你。"], ["我爱你爱你。"], "zh")
    assert rows[0]["length_ratio"] == pytest.approx(6 / 4)
    assert rows[0]["repeated"] == "爱 你"


def test_evaluate_command_stores_scores_report_and_comparison(
        tiny_model, tmp_path, test_pairs, capsys):
    """End to end on the tiny model: translations, scores with intervals, a comparison,
    CSV and HTML, all in the model folder; the translations equal Translator.translate."""
    from translator.translator import Translator

    model = shutil.copytree(tiny_model, tmp_path / "model")
    src, ref, other = tmp_path / "test.en", tmp_path / "test.de", tmp_path / "other.de"
    src.write_text("".join(s + "\n" for s, _ in test_pairs), encoding="utf-8")
    ref.write_text("".join(t + "\n" for _, t in test_pairs), encoding="utf-8")
    other.write_text("".join(shuffled_words(t, 1) + "\n" for _, t in test_pairs),
                     encoding="utf-8")
    code = evaluate.main(["--model", str(model), "--src", str(src), "--ref", str(ref),
                          "--beam", "2", "--compare", str(other)])
    assert code == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("BLEU = ") and "95% CI" in out[0] and "tok:13a" in out[0]
    assert out[1].startswith("BLEU (lowercased) = ") and "case:lc" in out[1]
    assert out[2].startswith("chrF2 = ") and out[3].startswith("TER = ")
    assert out[4].startswith("bleu: this ") and "at p < 0.05" in out[4]
    stored = model / "evaluations" / "test.en-beam2"
    assert sorted(p.name for p in stored.iterdir()) == [
        "hypotheses.txt", "report.html", "scores.json", "sentences.csv"]
    scores = json.loads((stored / "scores.json").read_text())
    assert scores["sentences"] == 100 and scores["beam"] == 2
    assert scores["compare"]["test"] == "bs" and "p_value" in scores["compare"]["bleu"]
    hyps = (stored / "hypotheses.txt").read_text(encoding="utf-8").splitlines()
    translator = Translator.load(model)
    assert hyps == translator.translate([s for s, _ in test_pairs], beam=2)
    assert scores["bleu"]["score"] == pytest.approx(
        metrics.bleu(hyps, [t for _, t in test_pairs], "de").score)
    with open(stored / "sentences.csv", encoding="utf-8-sig") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 100 and set(table[0]) == set(report.COLUMNS)
    assert [float(r["bleu"]) for r in table] == sorted(float(r["bleu"]) for r in table)
    page = (stored / "report.html").read_text(encoding="utf-8")
    assert page.count("<tr class=") == 100 and "95% CI" in page


def test_evaluate_command_on_a_corpus_split_and_its_refusals(tiny_model, tmp_path, capsys):
    model = shutil.copytree(tiny_model, tmp_path / "model")
    assert evaluate.main(["--model", str(model), "--split", "test_2016_flickr",
                          "--beam", "1"]) == 0
    scores = json.loads((model / "evaluations" / "multi30k-test_2016_flickr-greedy" /
                         "scores.json").read_text())
    assert scores["sentences"] == 1000 and scores["beam"] == 1
    short = tmp_path / "short.de"
    short.write_text("Ein Hund.\n", encoding="utf-8")
    src = tmp_path / "two.en"
    src.write_text("A dog.\nA cat.\n", encoding="utf-8")
    capsys.readouterr()
    assert evaluate.main(["--model", str(model), "--src", str(src), "--ref", str(short)]) == 2
    assert f"{src} has 2 lines but {short} has 1" in capsys.readouterr().err
    assert evaluate.main(["--model", str(model), "--split", "nope"]) == 2
    assert "has no split 'nope'" in capsys.readouterr().err
    assert evaluate.main(["--model", str(model)]) == 2
    assert "give --split" in capsys.readouterr().err
    assert evaluate.main(["--model", str(model), "--split", "val", "--name", "../x"]) == 2
    assert "--name '../x'" in capsys.readouterr().err
    assert evaluate.main(["--model", str(model), "--split", "val", "--compare", str(short)]) == 2
    assert "1014 sources, 1014 references, 1 lines in the output to compare" in \
        capsys.readouterr().err
    assert sorted(p.name for p in (model / "evaluations").iterdir()) == [
        "multi30k-test_2016_flickr-beam2",  # by training
        "multi30k-test_2016_flickr-greedy"]  # nothing by the refused ones, no temporaries


def test_training_stores_the_test_evaluation(tiny_model):
    """train.py scores its corpus' test split with the same code, intervals included."""
    scores = json.loads((tiny_model / "scores.json").read_text())
    stored = tiny_model / "evaluations" / "multi30k-test_2016_flickr-beam2"
    assert json.loads((stored / "scores.json").read_text()) == scores["test"]
    assert scores["test"]["bleu"]["interval"][0] <= scores["test"]["bleu"]["score"]
    assert (stored / "report.html").exists()


def test_python_m_translator_evaluate_runs_quietly_in_a_fresh_process(tiny_model, tmp_path):
    from test_startup import CPP_LOG_LINE, run

    model = shutil.copytree(tiny_model, tmp_path / "model")
    src, ref = tmp_path / "a.en", tmp_path / "a.de"
    src.write_text("A man is here.\nTwo dogs play.\n", encoding="utf-8")
    ref.write_text("Ein Mann ist hier.\nZwei Hunde spielen.\n", encoding="utf-8")
    result = run("-m", "translator", "evaluate", "--model", str(model), "--src", str(src),
                 "--ref", str(ref))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("BLEU = ") and len(result.stdout.splitlines()) == 4
    assert result.stderr.splitlines() == [
        f"stored in {model}/evaluations/a.en-beam2/ (scores.json, hypotheses.txt, "
        "sentences.csv, report.html)"]
    assert not CPP_LOG_LINE.search(result.stderr)
