"""Per-task parameters inside a shared model: soft-shared sub-modules and adapters.

Every token carries the index of its task slot (T5Config.task_slots), so one packed
row can mix tasks. A task-specific sub-module has one copy per slot; each copy is
applied to the whole input and each token keeps the output of its own slot's copy.
Attention never mixes tasks (packing masks attention to the token's own example),
so a token's result is exactly what its task's copy alone computes, and its
gradient reaches only that copy (`jnp.where` passes no gradient to the copies it
does not select).

Cost: a task-specific sub-module runs once per slot, so choose them sparingly
(the decoder's MLPs with 4 slots cost 4x those MLPs' FLOPs); adapters are small.
The copies are separate parameters rather than one stacked array, so that
per-parameter optimizer statistics (Adafactor's factored moments, its update
clipping and parameter scaling) never couple two tasks.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax.numpy as jnp

from t5jax.model import layers
from t5jax.model.config import T5Config

COPY_SUFFIX = "_task"


def copy_name(name: str, slot: int) -> str:
  return f"{name}{COPY_SUFFIX}{slot}"


def select_by_slot(outputs: list, slots_bt):
  """Per token, the output of its slot: outputs[k] is slot k's [B, T, ...] result."""
  out = outputs[0]
  for k in range(1, len(outputs)):
    out = jnp.where((slots_bt == k)[..., None], outputs[k], out)
  return out


def per_task(parent: nn.Module, make: Callable[..., nn.Module], name: str, stack: str,
             slots_bt, *args):
  """Applies sub-module `name` (built by make(name=...)) to args, with one copy per
  task slot when the config makes it task-specific.

  Must be called from `parent`'s compact method. The shared copy, named `name`, is
  created at initialisation only: it is the anchor of the soft-sharing penalty
  (and what checkpoints without task slots hold), not part of the forward pass.
  """
  cfg: T5Config = parent.config
  if not cfg.is_task_specific(stack, name):
    return make(name=name)(*args)
  if parent.is_initializing():
    make(name=name)(*args)
  outputs = [make(name=copy_name(name, k))(*args) for k in range(len(cfg.task_slots))]
  return select_by_slot(outputs, slots_bt)


class Adapter(nn.Module):
  """Bottleneck adapter x -> x + up(relu(down(x))), the identity at initialisation
  (up starts at zero)."""
  config: T5Config

  @nn.compact
  def __call__(self, x_btd):
    cfg = self.config
    d, r = cfg.d_model, cfg.adapter_dim
    pdt = jnp.dtype(cfg.param_dtype)
    down = layers.param_with_axes(self, "down", nn.initializers.normal(d**-0.5), (d, r),
                           ("embed", "adapter"), pdt)
    up = layers.param_with_axes(self, "up", nn.initializers.zeros, (r, d), ("adapter", "embed"), pdt)
    h_btr = nn.relu(jnp.einsum("BTD,DR->BTR", x_btd, down.astype(cfg.dtype)))
    return x_btd + jnp.einsum("BTR,RD->BTD", h_btr, up.astype(cfg.dtype))


def adapt(parent: nn.Module, slots_bt, x_btd):
  """Each token through its slot's adapter (no-op when adapter_dim is 0)."""
  cfg: T5Config = parent.config
  if not cfg.adapter_dim:
    return x_btd
  outputs = [Adapter(cfg, name=copy_name("adapter", k))(x_btd)
             for k in range(len(cfg.task_slots))]
  return select_by_slot(outputs, slots_bt)
