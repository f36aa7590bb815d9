"""Converts parameters between unrolled layers (layers_0 ... layers_N-1) and the
stacked form of `T5Config.scan_layers` (layers/layer with a leading layer axis)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from t5jax.model.config import T5Config

STACKS = (("encoder", "num_encoder_layers"), ("decoder", "num_decoder_layers"))


def stack_layers(params: dict, cfg: T5Config) -> dict:
  """Unrolled parameters -> scanned parameters (a new tree; inputs untouched)."""
  out = dict(params)
  for stack, field in STACKS:
    tree = dict(out[stack])
    layers = [tree.pop(f"layers_{i}") for i in range(getattr(cfg, field))]
    tree["layers"] = {"layer": jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}
    out[stack] = tree
  return out


def unstack_layers(params: dict, cfg: T5Config) -> dict:
  """Scanned parameters -> unrolled parameters (for Hugging Face export)."""
  out = dict(params)
  for stack, field in STACKS:
    tree = dict(out[stack])
    stacked = tree.pop("layers")["layer"]
    for i in range(getattr(cfg, field)):
      tree[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
    out[stack] = tree
  return out
