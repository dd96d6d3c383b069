"""After `make demo` trains: a few test sentences beside their references, and the test BLEU."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from translator.data import corpus
from translator.translator import Translator


def main(folder: str = "models/demo", count: int = 8) -> int:
    translator = Translator.load(folder)
    data = translator.config.data
    test = corpus.load_corpus(data.corpus, corpus.get_corpus(data.corpus).splits[2], data.src,
                              data.tgt, data.mirror)[:count]
    outputs = translator.translate([s for s, _ in test])
    for (source, reference), output in zip(test, outputs):
        print(f"source:      {source}\nreference:   {reference}\ntranslation: {output}\n")
    scores = json.loads(Path(folder, "scores.json").read_text(encoding="utf-8"))
    if "test" in scores:
        test_scores = scores["test"]
        print(f"test set ({test_scores['sentences']} sentences, beam {test_scores['beam']}): "
              f"{test_scores['bleu']['name']} {test_scores['bleu']['score']:.2f} "
              f"({test_scores['bleu']['signature']})")
        if "name" in test_scores:
            print(f"every test sentence, worst first: {folder}/evaluations/"
                  f"{test_scores['name']}/report.html")
    print(f'try it: .venv/bin/python translate.py --model {folder} "A dog runs in the park."')
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:2]))
