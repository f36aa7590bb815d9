"""A task's preprocessors split at SeqIO's cache point: the steps run once into its store,
and the per-example steps after them that `example_ops` runs in numpy.

SeqIO marks the point with `seqio.CacheDatasetPlaceholder`: the steps before it are
deterministic (formatting, tokenization); the steps after it are random or depend on the
sequence length (span corruption, trimming, EOS).
"""

from __future__ import annotations

import functools

import seqio

from t5jax.data import example_ops
from t5jax.data import span_corruption


def identify(step) -> tuple[str, dict] | None:
  """(`example_ops` op name, its keyword arguments) for a step t5jax runs per example, else
  None."""
  kwargs = {}
  if isinstance(step, functools.partial):
    kwargs, step = dict(step.keywords), step.func
  if step is span_corruption.span_corruption:
    return example_ops.SPAN_CORRUPTION, kwargs
  if step is span_corruption.ul2:
    return example_ops.UL2, kwargs
  if step is seqio.preprocessors.append_eos_after_trim:
    return example_ops.EOS_AFTER_TRIM, kwargs
  if step is seqio.preprocessors.append_eos:
    return example_ops.EOS, kwargs
  return None


def is_known(step) -> bool:
  return identify(step) is not None


def split_preprocessors(task: seqio.Task) -> tuple[list, list]:
  """(steps run once into the store, steps run per example), split at the cache placeholder.

  A task without a placeholder stores everything but its trailing per-example steps that
  `example_ops` knows (span corruption, EOS), which are random or length-dependent.
  """
  steps = list(task.preprocessors)
  for i, step in enumerate(steps):
    if isinstance(step, seqio.CacheDatasetPlaceholder):
      return steps[:i], steps[i + 1:]
  cut = len(steps)
  while cut > 0 and is_known(steps[cut - 1]):
    cut -= 1
  return steps[:cut], steps[cut:]
