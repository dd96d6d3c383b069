"""A training run: run.py (data, tokenizer, model, fit, resume, the model folder it
writes), callbacks.py (checkpoints, dev BLEU, early stopping, the time budget),
schedule.py (the learning rate), state.py (what a resumed run needs), optimizer.py
(Adam)."""
