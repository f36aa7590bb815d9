"""Which parameters train: OptimizerConfig.trainable, a regular expression over
parameter paths ("decoder/layers_0/attention/lora_q/a"). The step differentiates
only what matches (frozen weights get no gradient computed, no optimizer state)."""

from __future__ import annotations

import re

import jax

from t5jax.model import peft
from t5jax.model.config import T5Config


def path_name(path) -> str:
  return "/".join(str(getattr(k, "key", k)) for k in path)


def effective_pattern(pattern: str, cfg: T5Config) -> str:
  """The pattern a run uses: a PEFT model (LoRA, prompt) trains its PEFT parameters
  only unless told otherwise, as Hugging Face PEFT does."""
  if pattern or not cfg.peft:
    return pattern
  return peft.trainable_pattern(cfg)


def mask(params, pattern: str):
  """A tree of bools: True where the parameter trains (every one with no pattern).

  Raises:
    ValueError: the pattern matches no parameter.
  """
  if not pattern:
    return jax.tree.map(lambda _: True, params)
  compiled = re.compile(pattern)
  out = jax.tree_util.tree_map_with_path(
      lambda path, _: bool(compiled.search(path_name(path))), params)
  if not any(jax.tree.leaves(out)):
    raise ValueError(f"OptimizerConfig.trainable={pattern!r} matches no parameter; "
                     "parameter paths look like 'decoder/layers_0/adapter_task0/down'.")
  return out


def prune(tree):
  """A nested dict without its None leaves (and the dicts they leave empty)."""
  if not isinstance(tree, dict):
    return tree
  out = {k: prune(v) for k, v in tree.items() if v is not None}
  return {k: v for k, v in out.items() if not (isinstance(v, dict) and not v)}


def union(a: dict, b: dict) -> dict:
  """Two nested dicts with disjoint leaves as one (the inverse of parts)."""
  out = dict(a)
  for k, v in b.items():
    out[k] = union(out[k], v) if k in out and isinstance(v, dict) else v
  return out


def parts(params, pattern: str) -> tuple[dict, dict]:
  """(trained, frozen): two nested dicts, each with only its own leaves, whose union is
  `params` (what the step differentiates, and what a PEFT checkpoint saves)."""
  m = mask(params, pattern)
  pick = lambda trains: prune(jax.tree.map(lambda p, t: p if t == trains else None, params, m))
  return pick(True), pick(False)
