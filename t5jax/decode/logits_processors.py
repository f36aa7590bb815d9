"""Repetition guards for decoding, as Hugging Face's `generate` has them.

Pure functions of the next-token logits and the tokens decoded so far, which the
decode loops (decoding.py, beam_search.py) call once per step:

- `no_repeat_ngram_size=n` forbids every token that would complete an n-gram
  already in the output (fairseq's and HF's `no_repeat_ngram_size`);
- `repetition_penalty=p` divides the positive logits of tokens already in the
  output by p and multiplies the negative ones by p (CTRL; HF's
  `repetition_penalty`), so p > 1 discourages repeats.

As in HF for encoder-decoders, the decoder's start token (0) counts as part of
the output. Greedy decoding and sampling apply the guard to the logits, beam
search to the log-probabilities, again as HF does.

Shape letters: B rows, L decode length, V vocabulary, J n-gram start positions.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


def _marked_bv(tokens_bx, valid_bx, vocab: int):
  """[B, V] True for each token that tokens_bx holds at a valid position."""
  rows_b1 = jnp.arange(tokens_bx.shape[0])[:, None]
  # Invalid positions point past the vocabulary, and mode="drop" discards them.
  cols_bx = jnp.where(valid_bx, tokens_bx, vocab)
  return jnp.zeros((tokens_bx.shape[0], vocab), bool).at[rows_b1, cols_bx].set(True, mode="drop")


def penalize_repeats(logits_bv, history_bl, length, penalty: float):
  """HF's RepetitionPenaltyLogitsProcessor.

  Args:
    logits_bv: [B, V] next-token scores.
    history_bl: [B, L] the output so far (start token first); positions >= length
      are ignored.
    length: number of valid positions in history_bl (traced is fine).
    penalty: p > 0; 1 changes nothing.
  Returns:
    [B, V] scores with every seen token's score s turned into s / p (s > 0) or s * p.
  """
  valid_bl = jnp.arange(history_bl.shape[1])[None] < length
  seen_bv = _marked_bv(history_bl, valid_bl, logits_bv.shape[-1])
  penalized_bv = jnp.where(logits_bv < 0, logits_bv * penalty, logits_bv / penalty)
  return jnp.where(seen_bv, penalized_bv, logits_bv)


def ban_repeated_ngrams(logits_bv, history_bl, length, n: int):
  """HF's NoRepeatNGramLogitsProcessor: -inf for each token that would complete an
  n-gram that already occurs in history_bl[:, :length].

  Args:
    logits_bv: [B, V] next-token scores.
    history_bl: [B, L] the output so far (start token first).
    length: number of valid positions in history_bl (traced is fine).
    n: n-gram size >= 1.
  Returns:
    [B, V] scores, -inf on banned tokens.
  """
  l = history_bl.shape[1]
  j = l - n + 1
  if j <= 0:
    return logits_bv
  # ngram_bjn[b, j] = history[b, j : j + n], one row per possible start.
  ngram_bjn = jnp.stack([history_bl[:, m:m + j] for m in range(n)], axis=-1)
  # The last n - 1 tokens, which the next token would extend into an n-gram.
  # (Clamped at the start; while length < n no window is complete, so nothing matches.)
  suffix_bm = jax.lax.dynamic_slice_in_dim(history_bl, jnp.maximum(length - (n - 1), 0), n - 1,
                                           axis=1)
  complete_j = jnp.arange(j) + n <= length  # the n-gram lies inside the valid history
  match_bj = jnp.all(ngram_bjn[:, :, :-1] == suffix_bm[:, None, :], axis=-1) & complete_j[None]
  banned_bv = _marked_bv(ngram_bjn[:, :, -1], match_bj, logits_bv.shape[-1])
  return jnp.where(banned_bv, -jnp.inf, logits_bv)


@dataclasses.dataclass(frozen=True)
class RepetitionGuard:
  """The repetition options of a DecodeConfig, applied as one step (hashable, so
  it can be a static argument of the jitted decoders).

  Attributes:
    no_repeat_ngram_size: n > 0 bans repeating any n-gram; 0 is off.
    repetition_penalty: p > 1 discourages tokens already output; 1.0 is off.
  """

  no_repeat_ngram_size: int = 0
  repetition_penalty: float = 1.0

  def __post_init__(self):
    if self.no_repeat_ngram_size < 0:
      raise ValueError(f"no_repeat_ngram_size must be >= 0 (0 is off), got "
                       f"{self.no_repeat_ngram_size}.")
    if not self.repetition_penalty > 0.0:
      raise ValueError(f"repetition_penalty must be > 0 (1.0 is off, > 1 discourages repeats), "
                       f"got {self.repetition_penalty}.")

  @property
  def active(self) -> bool:
    return self.no_repeat_ngram_size > 0 or self.repetition_penalty != 1.0

  def __call__(self, scores_bv, output_bl, i, start_id: int = 0):
    """Guards the scores of step i.

    Args:
      scores_bv: [B, V] logits (greedy, sampling) or log-probabilities (beam).
      output_bl: [B, L] decoded tokens; positions < i are valid.
      i: the step, i.e. the number of tokens decoded so far.
      start_id: the token the decoder started from.
    Returns:
      [B, V] guarded scores.
    """
    start_b1 = jnp.full((output_bl.shape[0], 1), start_id, output_bl.dtype)
    history_bl = jnp.concatenate([start_b1, output_bl], axis=1)
    if self.repetition_penalty != 1.0:
      scores_bv = penalize_repeats(scores_bv, history_bl, i + 1, self.repetition_penalty)
    if self.no_repeat_ngram_size > 0:
      scores_bv = ban_repeated_ngrams(scores_bv, history_bl, i + 1, self.no_repeat_ngram_size)
    return scores_bv
