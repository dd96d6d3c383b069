"""What an ensemble of one run's epoch checkpoints (or of other runs' models) is worth.

    python bench/checkpoint_ensemble.py --model M --split val \\
        --members M/checkpoint/epoch-30.weights.h5 M/checkpoint/epoch-32.weights.h5

translates the split (of the model's corpus) with the model folder's best weights alone,
then with the log-linear ensemble of the best weights and each --members file (the
epoch weights a run keeps with training.average_last=K, or another run's model.keras of
the same architecture and tokenizer), as translator.model.Ensemble does: at every decoder
step the members' log-probabilities are averaged, and the search reads the average. The model's
configured beam and length penalty. Appends one record
to bench/results/checkpoint_ensemble-<cpu>.json. Choose on val; the test sets are not
for choosing.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import flops  # imports translator first: TensorFlow starts quietly


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a model folder")
    p.add_argument("--members", nargs="+", required=True, metavar="WEIGHTS",
                   help="weight files of the same architecture and tokenizer "
                   "(.weights.h5 or model.keras)")
    p.add_argument("--split", default="val")
    p.add_argument("--name", default="checkpoint_ensemble", help="results file name")
    args = p.parse_args(argv)

    from translator.data.corpus import load_corpus
    from translator.metrics import evaluate
    from translator.model import Ensemble
    from translator.model_folder import load_model_folder
    from translator.translator import Translator

    info = flops.print_machine()
    models = []
    for weights in [None, *args.members]:
        model, tokenizer, config = load_model_folder(args.model)
        if weights is not None:
            model.load_weights(weights)
        models.append(model)
    data = config.data
    pairs = load_corpus(data.corpus, args.split, data.src, data.tgt, data.mirror)
    sources, references = [s for s, _ in pairs], [t for _, t in pairs]
    rows = []
    for label, model in (("best", models[0]), (f"best + {len(args.members)}", Ensemble(models))):
        translator = Translator(model, tokenizer, config)
        started = time.monotonic()
        scores = evaluate(translator.translate(sources), references, data.tgt)
        rows.append({"models": label, "bleu": round(scores["bleu"]["score"], 2),
                     "chrf": round(scores["chrf"]["score"], 2),
                     "seconds": round(time.monotonic() - started, 1)})
        print(json.dumps(rows[-1]), flush=True)
    record = {"model": str(Path(args.model).resolve()), "members": args.members,
              "split": args.split, "beam": config.decoding.beam,
              "length_penalty": config.decoding.length_penalty, "results": rows,
              "bleu_signature": scores["bleu"]["signature"], "cpu_model": info["cpu_model"],
              "steal_share": flops.run_steal(info)}
    path = flops.results_path(args.name)
    history = json.loads(path.read_text()) if path.exists() else []
    path.write_text(json.dumps(history + [record], indent=2) + "\n", encoding="utf-8")
    print(f"recorded in {path}")


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
