"""SeqIO tasks to the batch pipeline's inputs: example stores and per-task recipes.

A SeqIO task splits its preprocessors at `seqio.CacheDatasetPlaceholder`: the steps before it
are deterministic (formatting, tokenization) and may be cached; the steps after it are random
or depend on the sequence length (span corruption, trimming, EOS). The batch pipeline runs the
first part once per (task, split) through SeqIO itself and stores each feature as one flat int32
array plus int64 offsets (`FEATURE.tokens.npy`, `FEATURE.offsets.npy`), memory-mapped when read,
so that example `i` is a slice and no process holds the data in its heap. The second part is
applied per example by `t5jax.data.example_ops`.

The store lives under the data dir (`$T5JAX_DATA_DIR`), keyed by a fingerprint of what made it:
the task's preprocessors, the vocabulary and the source (a TFDS builder's version, or the size
and time of a file source's files). A source whose content cannot be fingerprinted (a
`seqio.FunctionDataSource`) is read again in each process into a temporary directory.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import json
import os
import pathlib
import shutil
import tempfile

import numpy as np
import seqio
import tensorflow as tf

from t5jax.data import example_ops
from t5jax.data import example_store
from t5jax.data import noise
from t5jax.data import prepare
from t5jax.data import span_corruption

# Examples converted to numpy per tf.data batch while building (Python per-example cost
# dominates otherwise).
_BUILD_BATCH = 1024
_FORMAT_VERSION = 1


def _identify(step) -> tuple[str, dict] | None:
  """(op name, its keyword arguments) for a step this module implements, else None."""
  kwargs = {}
  if isinstance(step, functools.partial):
    kwargs, step = dict(step.keywords), step.func
  if step is span_corruption.span_corruption:
    return example_ops.SPAN_CORRUPTION, kwargs
  if step is seqio.preprocessors.append_eos_after_trim:
    return example_ops.EOS_AFTER_TRIM, kwargs
  if step is seqio.preprocessors.append_eos:
    return example_ops.EOS, kwargs
  return None


def is_known(step) -> bool:
  return _identify(step) is not None


def split_preprocessors(task: seqio.Task) -> tuple[list, list]:
  """(steps run once into the store, steps run per example), split at the cache placeholder.

  A task without a placeholder caches everything but its trailing per-example steps that
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


def _step_name(step) -> str:
  if isinstance(step, functools.partial):
    return f"{_step_name(step.func)}{sorted(step.keywords.items())}"
  return f"{getattr(step, '__module__', '')}.{getattr(step, '__qualname__', repr(step))}"


def _source_fingerprint(source: seqio.DataSource, split: str) -> str | None:
  """What identifies the source's content, or None where it cannot be known."""
  from t5jax.data import sources  # pylint: disable=g-import-not-at-top
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
    st = os.stat(f)
    parts.append(f"{os.path.abspath(f)}:{st.st_size}:{st.st_mtime_ns}")
  return "files:" + ";".join(parts)


def fingerprint(task: seqio.Task, split: str) -> str | None:
  """A hash of what the store of (task, split) is made from; None if not knowable."""
  source = _source_fingerprint(task.source, split)
  if source is None:
    return None
  pre, _ = split_preprocessors(task)
  vocab_ids = sorted(
      f"{k}:{type(f.vocabulary).__name__}:{getattr(f.vocabulary, 'sentencepiece_model_file', '')}"
      for k, f in task.output_features.items())
  text = json.dumps([_FORMAT_VERSION, task.name, split, source, vocab_ids,
                     [_step_name(s) for s in pre]])
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def _write(task: seqio.Task, split: str, pre: list, directory: pathlib.Path) -> None:
  """Runs the source and `pre` through SeqIO once, in file order, and writes the arrays."""
  ds = task.source.get_dataset(split=split, shuffle=False)
  # SeqIO's own step runner: it passes each preprocessor the arguments it asks for.
  ds = task._preprocess_dataset(ds, pre)  # pylint: disable=protected-access
  names = [k for k in task.output_features if k in ds.element_spec]
  if not names:
    raise ValueError(
        f"task {task.name!r} produces none of its output features {list(task.output_features)} "
        "before its CacheDatasetPlaceholder; tokenize before the placeholder")
  ds = ds.map(lambda ex: {**{k: ex[k] for k in names},
                          **{f"{k}/length": tf.size(ex[k]) for k in names}})
  chunks = {k: [] for k in names}
  lengths = {k: [] for k in names}
  for batch in ds.padded_batch(_BUILD_BATCH).as_numpy_iterator():
    for k in names:
      lens = batch[f"{k}/length"]
      padded = batch[k]
      # Row-major selection of each row's first `len` tokens: the examples, concatenated.
      chunks[k].append(padded[np.arange(padded.shape[1])[None, :] < lens[:, None]]
                       .astype(np.int32))
      lengths[k].append(lens.astype(np.int64))
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=".tmp-", dir=directory.parent))
  num_examples = 0
  for k in names:
    flat = np.concatenate(chunks[k]) if chunks[k] else np.zeros([0], np.int32)
    lens = np.concatenate(lengths[k]) if lengths[k] else np.zeros([0], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    np.save(tmp / f"{k}.tokens.npy", flat)
    np.save(tmp / f"{k}.offsets.npy", offsets)
    num_examples = len(lens)
  (tmp / "info.json").write_text(json.dumps(
      {"task": task.name, "split": split, "features": names, "num_examples": num_examples}))
  os.replace(tmp, directory) if not directory.exists() else shutil.rmtree(tmp)


_temporary_root: list[str] = []


def _temporary_dir() -> pathlib.Path:
  if not _temporary_root:
    _temporary_root.append(tempfile.mkdtemp(prefix="t5jax-examples-"))
    atexit.register(shutil.rmtree, _temporary_root[0], ignore_errors=True)
  return pathlib.Path(_temporary_root[0])


# (id(task), split) -> (task, directory); the task is kept so that its id is not reused.
_dirs: dict[tuple[int, str], tuple[seqio.Task, str]] = {}


def _store_dir(task: seqio.Task, split: str) -> str:
  cached = _dirs.get((id(task), split))
  if cached is not None:
    return cached[1]
  pre, _ = split_preprocessors(task)
  key = fingerprint(task, split)
  if key is None:
    directory = _temporary_dir() / f"{task.name}-{id(task)}" / split
    directory.parent.mkdir(parents=True, exist_ok=True)
    if not directory.exists():
      _write(task, split, pre, directory)
  else:
    directory = prepare.data_dir() / "t5jax_examples" / task.name / f"{split}-{key}"
    if not (directory / "info.json").exists():
      directory.parent.mkdir(parents=True, exist_ok=True)
      with prepare.file_lock(directory.parent / f".{split}-{key}.lock"):
        if not (directory / "info.json").exists():
          _write(task, split, pre, directory)
  _dirs[(id(task), split)] = (task, str(directory))
  return str(directory)


def get_store(task: seqio.Task, split: str) -> example_store.ExampleStore:
  """The store of (task, split), built on first use (once per data dir, under a file lock)."""
  return example_store.ExampleStore.open(_store_dir(task, split))


def recipe(task: seqio.Task, split: str, lengths: dict) -> example_ops.TaskRecipe:
  """The recipe of (task, split) at these lengths; builds the task's store if needed.

  Raises:
    ValueError: (one line) for a per-example step t5jax does not implement, a task without
      `inputs`/`targets`, or lengths too short for span corruption.
  """
  _, post = split_preprocessors(task)
  ops = []
  for i, step in enumerate(post):
    op = _identify(step)
    if op is None or (op[0] == example_ops.SPAN_CORRUPTION and i):
      name = getattr(step, "__name__", repr(step))
      raise ValueError(
          f"task {task.name!r} runs {name} after its CacheDatasetPlaceholder; the batch pipeline "
          "runs per example only span_corruption (first) and append_eos[_after_trim]: move "
          f"{name} before the placeholder if it is deterministic")
    ops.append(op)
  for feature in ("inputs", "targets"):
    if feature not in task.output_features:
      raise ValueError(
          f"task {task.name!r} has no {feature!r} feature; encoder-decoder training needs both")
  if ops and ops[0][0] == example_ops.SPAN_CORRUPTION:
    _, targets_needed = noise.span_corruption_lengths(
        lengths["inputs"], **example_ops.span_args(ops[0][1]))
    if lengths["targets"] < targets_needed:
      raise ValueError(
          f"targets_length={lengths['targets']} is too short for span corruption with "
          f"inputs_length={lengths['inputs']}; use targets_length >= {targets_needed}")
  store = get_store(task, split)
  return example_ops.TaskRecipe(
      name=task.name, store=store.directory, ops=tuple(ops),
      lengths={"inputs": int(lengths["inputs"]), "targets": int(lengths["targets"])},
      eos={k: int(f.vocabulary.eos_id) for k, f in task.output_features.items() if f.add_eos},
      vocab_size=int(task.output_features["targets"].vocabulary.vocab_size))
