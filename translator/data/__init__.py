"""From parallel text to batches: registry.py knows the corpora and fetches their files
(cache, local mirror, checksums), corpus.py reads parallel text, cleans it and splits it,
tokenizer.py trains and applies SentencePiece, pipeline.py turns token ids into padded
training batches."""
