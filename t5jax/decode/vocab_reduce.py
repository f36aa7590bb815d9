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
