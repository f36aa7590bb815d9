"""Reductions over the vocabulary that each decode step runs on the fresh logits.

They compute what jax.nn.log_softmax and jnp.argmax compute, written so that
XLA:CPU (jax 0.10) keeps them out of the output projection's matmul: fused into it
(`x - max(x)` straight after the dot), log_softmax over [128, 32,128] logits took 92
ms instead of 31, and argmax runs as one slow variadic reduce. benchmarks/decode.py
and docs/performance.md ("Decoding and inference speed") have the figures.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

ARGMAX_BLOCK = 128  # vocabulary entries per block of argmax's first pass


def log_softmax(logits_bv):
  """log softmax over the last axis, as logits - logsumexp(logits)."""
  return logits_bv - jax.nn.logsumexp(logits_bv, axis=-1, keepdims=True)


def argmax(logits_bv):
  """jnp.argmax over the last axis (the first index of the maximum), in two passes.

  A max over blocks of ARGMAX_BLOCK entries (a plain vectorised reduce), the first
  block holding the overall maximum, then the first maximum inside that block: the
  same index as jnp.argmax, whose (value, index) reduce XLA:CPU runs ~8x slower
  than a max. NaN rows follow jnp.argmax only in having no meaningful answer.
  """
  *lead, v = logits_bv.shape
  blocks = -(-v // ARGMAX_BLOCK)
  pad = blocks * ARGMAX_BLOCK - v
  padded = logits_bv if not pad else jnp.pad(
      logits_bv, [(0, 0)] * len(lead) + [(0, pad)], constant_values=-jnp.inf)
  blocked = padded.reshape(*lead, blocks, ARGMAX_BLOCK)
  block_max = jnp.max(blocked, axis=-1)
  best_block = jnp.argmax(block_max, axis=-1)
  inside = jnp.take_along_axis(blocked, best_block[..., None, None], axis=-2)[..., 0, :]
  return (best_block * ARGMAX_BLOCK + jnp.argmax(inside, axis=-1)).astype(jnp.int32)
