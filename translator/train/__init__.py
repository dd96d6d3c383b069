"""A training run: run.py (data, tokenizer, model, fit, resume, the model folder it
writes), callbacks.py (checkpoints, dev BLEU, early stopping, the learning-rate schedule,
the run's state), optimizer.py (Adam)."""
