"""A task's store's key: a hash of what its examples are made from.

The hash covers the task's preprocessors up to its cache point, the vocabularies, the source
(a TFDS builder's name and dir, or the path, size and time of each of a file source's files),
the store's format and the size of a text file's units: a change to any of them makes
another store, never a stale one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os

import seqio
import tensorflow as tf

from t5jax import store
from t5jax.data import prepare
from t5jax.data import source_units
from t5jax.data import sources
from t5jax.data import task_steps
from t5jax.data import vocab


def _step_name(step) -> str:
  if isinstance(step, functools.partial):
    return f"{_step_name(step.func)}{sorted(step.keywords.items())}"
  return f"{getattr(step, '__module__', '')}.{getattr(step, '__qualname__', repr(step))}"


def _source_fingerprint(source: seqio.DataSource, split: str) -> str | None:
  """What identifies the source's content, or None where it cannot be known."""
  if isinstance(source, sources.ShippedTfdsSource):
    return f"tfds:{source.tfds_dataset.name}:{prepare.data_dir()}"
  if isinstance(source, seqio.TfdsDataSource):
    return f"tfds:{source.tfds_dataset.name}:{source.tfds_dataset.data_dir}"
  if isinstance(source, seqio.FunctionDataSource):
    return None
  try:
    files = source.list_shards(split)
  except Exception:  # noqa: BLE001 - a source without files has no fingerprint
    return None
  parts = []
  for f in sorted(files):
    try:
      st = tf.io.gfile.stat(f)
    except tf.errors.NotFoundError:
      raise source_units.SourceError(f"corpus file {f} not found; check the path") from None
    parts.append(f"{f if store.is_gcs(f) else os.path.abspath(f)}:{st.length}:{st.mtime_nsec}")
  return "files:" + ";".join(parts)


def fingerprint(task: seqio.Task, split: str) -> str | None:
  """A hash of what the store of (task, split) is made from; None if not knowable (a
  `seqio.FunctionDataSource`)."""
  source = _source_fingerprint(task.source, split)
  if source is None:
    return None
  pre, _ = task_steps.split_preprocessors(task)
  vocab_ids = sorted(f"{k}:{json.dumps(vocab.identity(f.vocabulary), sort_keys=True)}"
                     for k, f in task.output_features.items())
  text = json.dumps([store.FORMAT, source_units.range_bytes(), task.name, split, source,
                     vocab_ids, [_step_name(s) for s in pre]])
  return hashlib.sha256(text.encode()).hexdigest()[:16]
