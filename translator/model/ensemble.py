"""An ensemble: several models of one architecture and vocabulary translating together.

At every decoder step each member reads its own state and gives its own distribution over
the next token; the ensemble's score for a token is the average of the members'
log-probabilities (a log-linear combination: the product of the members' probabilities,
renormalised, which the search does as for one model's logits). Models trained from
different seeds make different mistakes; the average keeps what they agree on.

The ensemble has the search interface of Seq2Seq (encode, decode_step), so the searches
and translator.translator use it as they use one model. Every state entry holds a tuple:
one value per member.
"""

from __future__ import annotations

import tensorflow as tf

from translator.model.operations import Operations
from translator.model.seq2seq import Seq2Seq


class Ensemble:
    """Members of one architecture and vocabulary (translator.model_folder loads them)."""

    def __init__(self, members: list[Seq2Seq]) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one member")
        if any(m.settings != members[0].settings for m in members):
            raise ValueError("an ensemble's members must share one architecture and "
                             "vocabulary (Seq2Seq.settings)")
        self.members = list(members)
        self.settings = members[0].settings
        self.compute_dtype = members[0].compute_dtype

    def use_operations(self, operations: Operations) -> None:
        for member in self.members:
            member.use_operations(operations)

    def encode(self, source, training=None, for_search=False):
        """Each member encodes the source; the state holds the members' states entry by
        entry. The members' outputs are always the logits (for_search is not passed on: a
        search's fused top-k reads one model's features, and the members' log-probabilities
        must be averaged first)."""
        encoded = [member.encode(source, training=training) for member in self.members]
        states = [state for _, _, state in encoded]
        memory, mask, _ = encoded[0]
        return memory, mask, {key: tuple(s[key] for s in states) for key in states[0]}

    def decode_step(self, tokens, state, for_search=False):
        """One step of every member; returns the average of their log-probabilities
        [batch, tgt_vocab] float32 (where one model returns its logits), the new state
        and the average of their attention weights, float32."""
        rows = state.get("sentence_rows")  # one value for all members (see Seq2Seq)
        log_probs, new_states, weights = [], [], []
        for i, member in enumerate(self.members):
            own = {key: value[i] for key, value in state.items() if key != "sentence_rows"}
            if rows is not None:
                own["sentence_rows"] = rows
            logits, new_state, attention = member.decode_step(tokens, own)
            log_probs.append(tf.nn.log_softmax(logits))
            new_states.append(new_state)
            weights.append(tf.cast(attention, tf.float32))
        n = float(len(self.members))
        merged = {key: tuple(s[key] for s in new_states) for key in new_states[0]
                  if key != "sentence_rows"}
        if rows is not None:
            merged["sentence_rows"] = rows
        return tf.add_n(log_probs) / n, merged, tf.add_n(weights) / n
