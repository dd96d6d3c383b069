"""Search over a step function `step(tokens, state) -> (logits, state)`; knows nothing
about the model. loop.py is the one loop; greedy.py and beam.py are its strategies;
top_k.py finds each step's best tokens.
"""

from translator.search.beam import beam_search, length_penalty
from translator.search.greedy import greedy_search
from translator.search.loop import (BOS_ID, EOS_ID, PAD_ID, SearchResult,
                                    max_output_lengths)

__all__ = ["BOS_ID", "EOS_ID", "PAD_ID", "SearchResult", "beam_search", "greedy_search",
           "length_penalty", "max_output_lengths"]
