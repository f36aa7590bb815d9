"""Reductions over the vocabulary that each decode step runs on the fresh logits.

They compute what jax.nn.log_softmax, jnp.argmax and jax.lax.top_k compute, written
so that XLA:CPU (jax 0.10) runs them fast: fused into the output projection's matmul
(`x - max(x)` straight after the dot), log_softmax over [128, 32,128] logits took 92
ms instead of 31; argmax's (value, index) reduce and the TopK call scan ~8x slower
than a max, so both start with a max over blocks. benchmarks/decode.py and
docs/performance/decoding.md have the figures.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

BLOCK = 128  # entries per block of argmax's and top_k's first pass (a max per block)


def log_softmax(logits_bv):
  """log softmax over the last axis, as logits - logsumexp(logits)."""
  return logits_bv - jax.nn.logsumexp(logits_bv, axis=-1, keepdims=True)


def argmax(logits_bv):
  """jnp.argmax over the last axis (the first index of the maximum), in two passes.

  A max over blocks of BLOCK entries (a plain vectorised reduce), the first
  block holding the overall maximum, then the first maximum inside that block: the
  same index as jnp.argmax, whose (value, index) reduce XLA:CPU runs ~8x slower
  than a max. NaN rows follow jnp.argmax only in having no meaningful answer.
  """
  blocked = _blocks(logits_bv)
  block_max = jnp.max(blocked, axis=-1)
  best_block = jnp.argmax(block_max, axis=-1)
  inside = jnp.take_along_axis(blocked, best_block[..., None, None], axis=-2)[..., 0, :]
  return (best_block * BLOCK + jnp.argmax(inside, axis=-1)).astype(jnp.int32)


def top_k(x_bn, k: int):
  """jax.lax.top_k over the last axis (the same values and indices, ties to the
  lower index), reading the whole row once only, in a max per block.

  Every one of the k largest entries lies in one of the k blocks whose own largest
  entries rank highest (else k blocks each hold a larger entry). So: the k best
  blocks by their maxima, taken in index order, then top_k over their k * BLOCK
  entries, whose order by position is their order by index.
  """
  n = x_bn.shape[-1]
  if n <= k * BLOCK:
    return jax.lax.top_k(x_bn, k)
  blocked = _blocks(x_bn)
  _, best_bk = jax.lax.top_k(jnp.max(blocked, axis=-1), k)
  best_bk = jnp.sort(best_bk, axis=-1)
  candidates = jnp.take_along_axis(blocked, best_bk[..., None], axis=-2)
  values, position = jax.lax.top_k(candidates.reshape(x_bn.shape[:-1] + (k * BLOCK,)), k)
  block = jnp.take_along_axis(best_bk, position // BLOCK, axis=-1)
  return values, (block * BLOCK + position % BLOCK).astype(jnp.int32)


def _blocks(x_bn):
  """[..., N] -> [..., ceil(N / BLOCK), BLOCK], padded with -inf (which ties lose:
  the padding's indices are above every real one)."""
  *lead, n = x_bn.shape
  blocks = -(-n // BLOCK)
  pad = blocks * BLOCK - n
  if pad:
    x_bn = jnp.pad(x_bn, [(0, 0)] * len(lead) + [(0, pad)], constant_values=-jnp.inf)
  return x_bn.reshape(*lead, blocks, BLOCK)


def top_k_log_softmax(logits_fv, offset_bk, k: int, vocab_major: bool = False):
  """The k best candidates of a beam step, without writing its log-probabilities.

  Returns what top_k(offset_bk[..., None] + log_softmax(logits)) over the flattened
  (beam, token) axis of each input returns: the same values (up to the order in
  which lse's sum is taken) and indices j * V + v, ties to the lower one. A row's
  log-softmax is logits - lse, so its candidates are a nondecreasing function of
  its logits, and a block's best candidate is that of its largest logit: one pass
  of block maxima over the logits ranks the blocks (then top_k over the k best
  blocks' entries, as in top_k above), one pass of exp-and-sum gives lse. Writing
  the [B*K, V] log-probabilities and candidates first took three passes more
  (with the transposes below, beam search at batch 8 spent ~15% of a step there).

  Args:
    logits_fv: [B*K, V] float32 logits; row b * K + j is beam j of input b.
    offset_bk: [B, K] added to each row's log-probabilities (a beam's log p so far).
    k: how many to return per input.
    vocab_major: the logits are laid out [V, B*K] in memory (a matmul of a kernel's
      [out, in] copy, layers.out_in_matmul, makes them so), and every pass reads
      them in that order: XLA:CPU transposed them for each row-wise pass otherwise.
  Returns:
    (values [B, k], indices [B, k] into the flattened K * V axis), best first.
  """
  b, j = offset_bk.shape
  f, v = logits_fv.shape
  # [V, F] or [F, V] as laid out; the transpose undoes out_in_matmul's (no copy).
  x = logits_fv.T if vocab_major else logits_fv
  v_axis = 0 if vocab_major else 1
  # The row maxima from the block maxima: the barrier keeps XLA from turning that
  # back into a second pass over the logits.
  block_max_fn = jax.lax.optimization_barrier(_block_max(x, v_axis))
  nb = block_max_fn.shape[1]
  row_max_f = _finite_or_zero(jnp.max(block_max_fn, axis=1))
  sum_exp_f = jnp.sum(jnp.exp(x - jnp.expand_dims(row_max_f, v_axis)), axis=v_axis)
  # jax.nn.logsumexp's formula.
  lse_bj = (jnp.log(jnp.abs(sum_exp_f)) + row_max_f).reshape(b, j)
  block_cand_bm = (offset_bk[..., None]
                   + (block_max_fn.reshape(b, j, nb) - lse_bj[..., None])).reshape(b, j * nb)
  _, best_bk = jax.lax.top_k(block_cand_bm, k)
  best_bk = jnp.sort(best_bk, axis=-1)  # in index order, so ties go to the lower index
  beam_bk, block_bk = best_bk // nb, best_bk % nb
  # The chosen blocks' entries [B, k, BLOCK]; past V (the last block's padding), -inf.
  rows_bk1 = (jnp.arange(b)[:, None] * j + beam_bk)[..., None]
  token_bkc = block_bk[..., None] * BLOCK + jnp.arange(BLOCK)
  inside = jnp.minimum(token_bkc, v - 1)
  chosen_bkc = x[inside, rows_bk1] if vocab_major else x[rows_bk1, inside]
  chosen_bkc = jnp.where(token_bkc < v, chosen_bkc, -jnp.inf)
  # The same arithmetic as offset + log_softmax, on the chosen entries only.
  cand_bkc = (jnp.take_along_axis(offset_bk, beam_bk, axis=1)[..., None]
              + (chosen_bkc - jnp.take_along_axis(lse_bj, beam_bk, axis=1)[..., None]))
  values, position = jax.lax.top_k(cand_bkc.reshape(b, k * BLOCK), k)
  pick = position // BLOCK
  token = jnp.take_along_axis(block_bk, pick, axis=-1) * BLOCK + position % BLOCK
  return values, (jnp.take_along_axis(beam_bk, pick, axis=-1) * v + token).astype(jnp.int32)


def _block_max(x, v_axis: int):
  """[F, ceil(V / BLOCK)] maxima of blocks of BLOCK entries along x's vocabulary
  axis (0: x is [V, F], 1: [F, V]); the last block, if partial, alone is padded."""
  v = x.shape[v_axis]
  full = v // BLOCK
  maxima = []
  if v_axis == 0:
    if full:
      maxima.append(jnp.max(x[:full * BLOCK].reshape(full, BLOCK, -1), axis=1).T)
    if v % BLOCK:
      maxima.append(jnp.max(x[full * BLOCK:], axis=0)[:, None])
  else:
    if full:
      maxima.append(jnp.max(x[:, :full * BLOCK].reshape(-1, full, BLOCK), axis=2))
    if v % BLOCK:
      maxima.append(jnp.max(x[:, full * BLOCK:], axis=1, keepdims=True))
  return jnp.concatenate(maxima, axis=1) if len(maxima) > 1 else maxima[0]


def _finite_or_zero(x):
  """logsumexp's shift: the max, or 0 where it is not finite."""
  return jax.lax.stop_gradient(jnp.where(jnp.isfinite(x), x, 0.0))
