"""A model's parameter tree without allocating it: shapes, dtypes and logical-axis boxes."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def dummy_inputs(inputs_length: int = 8, targets_length: int = 8):
  """One row of encoder and decoder tokens, enough for `model.init` to trace. Call it inside
  the traced function: made outside, under a mesh of devices this host cannot reach (a TPU
  topology compiled for without a TPU), the arrays would have nowhere to live."""
  return (jnp.ones((1, inputs_length), jnp.int32), jnp.ones((1, targets_length), jnp.int32))


def abstract_boxed_params(model: nn.Module, inputs_length: int = 8, targets_length: int = 8):
  """Parameter shapes with their logical-axis boxes (`nn.Partitioned`), nothing allocated."""
  return jax.eval_shape(
      lambda: model.init(jax.random.key(0), *dummy_inputs(inputs_length, targets_length))
  )["params"]


def strip_boxes(tree):
  """Drops the logical-axis boxes without adding sharding constraints (which
  abstract values outside jit cannot take)."""
  return jax.tree.map(lambda x: x.value if isinstance(x, nn.Partitioned) else x, tree,
                      is_leaf=lambda x: isinstance(x, nn.Partitioned))


def abstract_params(model: nn.Module):
  """The plain parameter tree's ShapeDtypeStructs: what a checkpoint restores into."""
  return strip_boxes(abstract_boxed_params(model))
