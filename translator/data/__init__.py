"""From parallel text to batches: corpus.py reads corpora (files, TSV, the registry, the
local mirror; checksums, cleaning, splits), tokenizer.py trains and applies SentencePiece,
pipeline.py turns token ids into padded training batches."""
