"""Operations on the parameter tree of a model with task slots (see task_routing.py).

A soft-shared sub-module NAME holds the shared anchor at NAME and slot k's copy at
NAME_task{k}, with the same structure; adapters live at adapter_task{k}. These
functions work on nested dicts of arrays, scanned (stacked) layers included.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import jax
import jax.numpy as jnp

from t5jax.model import peft
from t5jax.model.config import T5Config
from t5jax.model.task_routing import COPY_SUFFIX

_COPY = re.compile(rf"^(.*){COPY_SUFFIX}(\d+)$")


def _copies(node: dict) -> list[tuple[str, str, int]]:
  """(copy key, anchor key, slot) for the soft-shared copies directly in `node`."""
  out = []
  for key in node:
    m = _COPY.match(key)
    if m and m.group(1) in node:  # adapters and per-task LoRA/prompts have no anchor
      out.append((key, m.group(1), int(m.group(2))))
  return out


def _walk(params: Any, visit: Callable[[dict], dict]) -> Any:
  """Rebuilds the tree bottom-up, letting visit(node) rewrite each dict."""
  if not isinstance(params, dict):
    return params
  return visit({k: _walk(v, visit) for k, v in params.items()})


def init_copies_from_shared(params):
  """Every task copy set to its shared anchor: the model then computes exactly
  what the hard-shared model with the anchors computes. The copies are new
  buffers: a donated training state must not hold one buffer twice."""
  def visit(node):
    for key, anchor, _ in _copies(node):
      node[key] = jax.tree.map(jnp.copy, node[anchor])
    return node
  return _walk(params, visit)


def soft_sharing_penalty(params) -> jax.Array:
  """sum over slots t and copied parameters of ||theta_t - theta_shared||^2 (fp32)."""
  total = [jnp.zeros((), jnp.float32)]

  def visit(node):
    for key, anchor, _ in _copies(node):
      for a, b in zip(jax.tree.leaves(node[key]), jax.tree.leaves(node[anchor])):
        total[0] = total[0] + jnp.sum(jnp.square(a.astype(jnp.float32) - b.astype(jnp.float32)))
    return node
  _walk(params, visit)
  return total[0]


def shared_only(params):
  """The tree without task copies, adapters, LoRA and prompts: a plain T5 tree."""
  def visit(node):
    return {k: v for k, v in node.items()
            if not (_COPY.match(k) or k.startswith(peft.LORA_PREFIX) or k == peft.PROMPT)}
  return _walk(params, visit)


def with_shared(params, shared):
  """`params` with every shared parameter (and every copy's anchor) replaced by
  `shared`'s, and the copies re-initialised from their new anchors; adapters are
  kept. Used to start a model with task slots from a plain T5 checkpoint."""
  def merge(p, s):
    if not isinstance(p, dict):
      return s
    return {k: merge(v, s[k]) if k in s else v for k, v in p.items()}
  return init_copies_from_shared(merge(params, shared))


def for_task(params, cfg: T5Config, task: str) -> tuple[T5Config, Any]:
  """A plain T5 (config, params) for one task: its slot's copies in place of the
  shared modules. Slot names may be given instead of task names.

  Raises:
    ValueError: the model has adapters (plain T5 has no place for them), or the
      task matches no slot.
  """
  if cfg.adapter_dim:
    raise ValueError(
        f"This model has task adapters (adapter_dim={cfg.adapter_dim}), which a plain T5 "
        "cannot hold; export a soft-shared or hard-shared model instead.")
  slot = cfg.task_slots.index(task) if task in cfg.task_slots else cfg.slot_of_task(task)

  def take_slot(node):
    for key, anchor, k in _copies(node):
      if k == slot:
        node[anchor] = node[key]
    return node
  plain = cfg.replace(task_slots=(), task_specific=(), adapter_dim=0)
  return plain, shared_only(_walk(params, take_slot))
