"""Beam search with T5's length penalty, as one jitted `lax.while_loop`.

Model-agnostic: the caller supplies the step function and how to reorder its
cache, and decoding.py wires in the T5 decoder. The bookkeeping follows t5x and
the Flax examples: K live beams (never ended by EOS) and K finished ones, both
kept sorted, and a stop as soon as no live beam can beat the worst finished one.

One deliberate difference from t5x: a candidate that ends with EOS joins the
finished set only if it ranks among the step's top K candidates (as in fairseq
and Hugging Face). The other K candidates exist only so that K beams can stay
live; letting their EOS endings finish as well makes one beam differ from greedy
decoding whenever EOS is the second-best token.

Shape letters: B batch, K beams, C = 2K candidates, L decode length, V vocabulary.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from t5jax.decode import vocab_reduce

# Finite, so that NEG_INF + log p stays ordered and never turns into NaN.
NEG_INF = -1.0e7


def brevity_penalty(alpha, length):
  """T5's (GNMT's) length normaliser ((5 + length) / 6) ** alpha; scores are log p / this."""
  return jnp.power((5.0 + jnp.asarray(length, jnp.float32)) / 6.0, alpha)


class BeamResult(NamedTuple):
  """K hypotheses per input, best first.

  seqs_bkl: tokens, padding (0) after EOS.
  logprob_bk: log-likelihood of each sequence, EOS included.
  score_bk: logprob_bk / brevity_penalty(alpha, length), what the beams are ranked by;
    NEG_INF marks an empty slot (fewer than K beams reached EOS).
  """
  seqs_bkl: jax.Array
  logprob_bk: jax.Array
  score_bk: jax.Array


class _State(NamedTuple):
  i: jax.Array                # tokens decoded so far
  last_bk: jax.Array          # the live beams' latest token, fed to the next step
  live_seqs_bkl: jax.Array
  live_logprob_bk: jax.Array  # sorted, best first
  fin_seqs_bkl: jax.Array
  fin_logprob_bk: jax.Array
  fin_score_bk: jax.Array     # sorted, best first; NEG_INF in unfilled slots
  fin_flag_bk: jax.Array
  cache: object


def _take(x_bc, idx_bk):
  """Per-row gather along axis 1: x[b, idx[b, k], ...]."""
  idx = idx_bk.reshape(idx_bk.shape + (1,) * (x_bc.ndim - 2))
  return jnp.take_along_axis(x_bc, idx, axis=1)


def beam_search(tokens_to_logits: Callable, reorder_cache: Callable, cache, *, batch_size: int,
                num_beams: int, max_decode_length: int, alpha, eos_id: int,
                start_id: int, num_returned: int | None = None, guard=None,
                vocab_major: bool = False) -> BeamResult:
  """Beam search over a cache already expanded to batch_size * num_beams rows.

  Args:
    tokens_to_logits: (cache, tokens [B*K]) -> (logits [B*K, V], cache); row b*K + k
      is beam k of input b.
    reorder_cache: (cache, rows [B*K]) -> cache whose row r is the old row rows[r].
    cache: the initial cache, every beam of an input holding the same state.
    alpha: length penalty exponent (0: rank by log-likelihood).
    eos_id, start_id: the end token, and the token fed at the first step.
    num_returned: how many of the best hypotheses must be final (default all K).
      Search stops once live beams can no longer change those, so 1 (when only
      the best is wanted) often stops far sooner than K.
    guard: None, or (log-probs [B*K, V], live tokens [B*K, L], step, start_id) ->
      log-probs the beams expand by (a logits_processors.RepetitionGuard). With a
      repetition penalty the returned log-likelihoods are those of the guarded
      distribution, as Hugging Face's sequences_scores are.
    vocab_major: tokens_to_logits's logits lie [V, B*K] in memory (see
      vocab_reduce.top_k_log_softmax); only how fast, not what, it computes.
  Returns:
    BeamResult. An input whose beams never reach EOS returns its live beams, cut at
    max_decode_length and scored at that length.
  """
  b, k, l = batch_size, num_beams, max_decode_length
  n = k if num_returned is None else num_returned
  if not 1 <= n <= k:
    raise ValueError(f"num_returned={num_returned} must be in [1, num_beams={k}].")
  max_penalty = lambda i: jnp.maximum(brevity_penalty(alpha, i + 1), brevity_penalty(alpha, l))

  def cond(s: _State):
    # log p only falls as a beam grows, so live log p / the largest penalty still
    # reachable bounds every score a live beam can finish with.
    best_live_b = s.live_logprob_bk[:, 0] / max_penalty(s.i)
    # The n-th best finished score, while there are n finished beams.
    nth_fin_b = jnp.where(s.fin_flag_bk[:, n - 1], s.fin_score_bk[:, n - 1], NEG_INF)
    return (s.i < l) & ~jnp.all(nth_fin_b >= best_live_b)

  def body(s: _State):
    logits_fv, cache = tokens_to_logits(s.cache, s.last_bk.reshape(b * k))
    v = logits_fv.shape[-1]
    if v < 2 * k:
      raise ValueError(f"num_beams={k} needs a vocabulary of at least {2 * k} tokens, got "
                       f"{v}; use fewer beams.")
    # 2K candidates: at most K of them end with EOS (one per beam), so K stay live.
    if guard is None:
      top_logprob_bc, flat_bc = vocab_reduce.top_k_log_softmax(
          logits_fv.astype(jnp.float32), s.live_logprob_bk, 2 * k, vocab_major)
    else:
      logprob_fv = vocab_reduce.log_softmax(logits_fv.astype(jnp.float32))
      logprob_fv = guard(logprob_fv, s.live_seqs_bkl.reshape(b * k, l), s.i, start_id)
      cand_bkv = s.live_logprob_bk[:, :, None] + logprob_fv.reshape(b, k, v)
      top_logprob_bc, flat_bc = vocab_reduce.top_k(cand_bkv.reshape(b, k * v), 2 * k)
    parent_bc, token_bc = flat_bc // v, (flat_bc % v).astype(jnp.int32)
    seqs_bcl = _take(s.live_seqs_bkl, parent_bc)
    seqs_bcl = jax.lax.dynamic_update_slice(seqs_bcl, token_bc[:, :, None], (0, 0, s.i))
    eos_bc = token_bc == eos_id

    live_logprob_bk, pick_bk = jax.lax.top_k(jnp.where(eos_bc, NEG_INF, top_logprob_bc), k)
    rows = (jnp.arange(b)[:, None] * k + _take(parent_bc, pick_bk)).reshape(b * k)
    cache = reorder_cache(cache, rows)

    # Only the step's top K candidates may finish (see the module docstring).
    new_fin_bc = eos_bc & (jnp.arange(2 * k) < k)[None]
    new_score_bc = jnp.where(new_fin_bc, top_logprob_bc / brevity_penalty(alpha, s.i + 1),
                             NEG_INF)
    fin_score_bk, pick_fin_bk = jax.lax.top_k(
        jnp.concatenate([s.fin_score_bk, new_score_bc], axis=1), k)
    merged = lambda old, new: _take(jnp.concatenate([old, new], axis=1), pick_fin_bk)
    return _State(
        i=s.i + 1,
        last_bk=_take(token_bc, pick_bk),
        live_seqs_bkl=_take(seqs_bcl, pick_bk),
        live_logprob_bk=live_logprob_bk,
        fin_seqs_bkl=merged(s.fin_seqs_bkl, seqs_bcl),
        fin_logprob_bk=merged(s.fin_logprob_bk, top_logprob_bc),
        fin_score_bk=fin_score_bk,
        fin_flag_bk=merged(s.fin_flag_bk, new_fin_bc),
        cache=cache)

  # All K beams start identical: only beam 0 may expand at the first step.
  init_logprob_bk = jnp.tile(jnp.where(jnp.arange(k) == 0, 0.0, NEG_INF)[None], (b, 1))
  state = _State(
      i=jnp.zeros((), jnp.int32),
      last_bk=jnp.full((b, k), start_id, jnp.int32),
      live_seqs_bkl=jnp.zeros((b, k, l), jnp.int32),
      live_logprob_bk=init_logprob_bk,
      fin_seqs_bkl=jnp.zeros((b, k, l), jnp.int32),
      fin_logprob_bk=jnp.zeros((b, k), jnp.float32),
      fin_score_bk=jnp.full((b, k), NEG_INF, jnp.float32),
      fin_flag_bk=jnp.zeros((b, k), bool),
      cache=cache)
  s = jax.lax.while_loop(cond, body, state)

  any_fin_b11 = jnp.any(s.fin_flag_bk, axis=1)[:, None, None]
  live_score_bk = s.live_logprob_bk / brevity_penalty(alpha, l)
  return BeamResult(
      seqs_bkl=jnp.where(any_fin_b11, s.fin_seqs_bkl, s.live_seqs_bkl),
      logprob_bk=jnp.where(any_fin_b11[:, :, 0], s.fin_logprob_bk, s.live_logprob_bk),
      score_bk=jnp.where(any_fin_b11[:, :, 0], s.fin_score_bk, live_score_bk))
