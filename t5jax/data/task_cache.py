"""SeqIO tasks to the batch pipeline's inputs: example stores and per-task recipes.

A SeqIO task splits its preprocessors at `seqio.CacheDatasetPlaceholder`: the steps before it
are deterministic (formatting, tokenization) and are run once per (task, split) through SeqIO
itself into an example store (`example_store`, built by `cache_build`); the steps after it are
random or depend on the sequence length (span corruption, trimming, EOS) and are applied per
example by `t5jax.data.example_ops`.

The store lives under the data dir (`$T5JAX_DATA_DIR`, a local path or a `gs://` URL), keyed
by a fingerprint of what made it: the task's preprocessors, the vocabulary and the source (a
TFDS builder's name and dir, or the size and time of a file source's files). Who builds it:

* a source up to `AUTO_BUILD_BYTES` is built on first use (the shipped tasks, small user
  tasks): on local disk by the first process of each host (under a file lock), on GCS by
  process 0 while the other processes wait for its manifest;
* a larger source is refused in one line: run `t5jax cache` (a Beam pipeline) first.

A source whose content cannot be fingerprinted (a `seqio.FunctionDataSource`) is read again
in each process into a temporary directory.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time

import seqio
import tensorflow as tf

from t5jax.data import cache_build
from t5jax.data import cache_units
from t5jax.data import example_ops
from t5jax.data import example_store
from t5jax.data import noise
from t5jax.data import prepare
from t5jax.data import span_corruption
from t5jax.data import store_io
from t5jax.data import ul2
from t5jax.data import vocab

# Sources up to this size build on first use; larger ones need `t5jax cache`.
AUTO_BUILD_ENV = "T5JAX_AUTO_BUILD_BYTES"
AUTO_BUILD_BYTES = 256 << 20
# How long processes other than 0 wait for process 0 to build a store on GCS.
WAIT_ENV = "T5JAX_STORE_WAIT_SECONDS"
WAIT_SECONDS = 3600


def _identify(step) -> tuple[str, dict] | None:
  """(op name, its keyword arguments) for a step this module implements, else None."""
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
    try:
      st = tf.io.gfile.stat(f)
    except tf.errors.NotFoundError:
      raise cache_units.SourceError(f"corpus file {f} not found; check the path") from None
    parts.append(f"{f if store_io.is_gcs(f) else os.path.abspath(f)}:{st.length}:{st.mtime_nsec}")
  return "files:" + ";".join(parts)


def fingerprint(task: seqio.Task, split: str) -> str | None:
  """A hash of what the store of (task, split) is made from; None if not knowable."""
  source = _source_fingerprint(task.source, split)
  if source is None:
    return None
  pre, _ = split_preprocessors(task)
  vocab_ids = sorted(f"{k}:{json.dumps(vocab.identity(f.vocabulary), sort_keys=True)}"
                     for k, f in task.output_features.items())
  text = json.dumps([example_store.FORMAT, cache_units.range_bytes(), task.name, split, source,
                     vocab_ids, [_step_name(s) for s in pre]])
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def source_bytes(task: seqio.Task, units: list[dict]) -> int | None:
  """The size of the source's files (what a build reads), or None if unknown."""
  total = 0
  for u in units:
    if u["kind"] == "lines":
      total += u["stop"] - u["start"]
    elif u["kind"] == "file":
      total += u["bytes"]
    elif u["kind"] == "tfds":
      return int(task.source.tfds_dataset.info.dataset_size)
    else:
      return None
  return total


def store_location(task: seqio.Task, split: str, key: str | None = None) -> str | None:
  """Where the store of (task, split) lives under the data dir (None: not fingerprintable).

  Args:
    key: its `fingerprint` when the caller has it (computing it stats every source file).
  """
  key = key or fingerprint(task, split)
  if key is None:
    return None
  return store_io.join(prepare.data_location(), "t5jax_examples", task.name, f"{split}-{key}")


_temporary_root: list[str] = []


def _temporary_dir() -> str:
  if not _temporary_root:
    _temporary_root.append(tempfile.mkdtemp(prefix="t5jax-examples-"))
    atexit.register(shutil.rmtree, _temporary_root[0], ignore_errors=True)
  return _temporary_root[0]


# (id(task), split) -> (task, location); the task is kept so that its id is not reused.
_locations: dict[tuple[int, str], tuple[seqio.Task, str]] = {}


def _build_here(task: seqio.Task, split: str, location: str, key: str,
                units: list[dict]) -> None:
  job = cache_build.Job(task=task.name, split=split, location=location, fingerprint=key)
  cache_build.build(job, units, workers=0, progress_seconds=30.0, task=task)


def _ensure(task: seqio.Task, split: str, process_index: int) -> str:
  """The location of a complete store of (task, split), built here if it may be."""
  key = fingerprint(task, split)
  if key is None:
    location = os.path.join(_temporary_dir(), f"{task.name}-{id(task)}", split)
    _build_here(task, split, location, "temporary", cache_units.plan(task, split))
    return location
  location = store_location(task, split, key)
  directory = store_io.Directory(location)
  if directory.read(example_store.MANIFEST) is not None:
    return location
  units = cache_units.plan(task, split)
  size = source_bytes(task, units)
  limit = int(os.environ.get(AUTO_BUILD_ENV, AUTO_BUILD_BYTES))
  if size is not None and size > limit:
    raise store_io.StoreError(
        f"task {task.name!r} split {split!r} has no example store at {location} and its source "
        f"({size / 2**20:.0f} MB) is over the {limit / 2**20:.0f} MB built on first use; build "
        f"it first: t5jax cache --task {task.name} --split {split} [--module YOUR_MODULE]")
  if store_io.is_gcs(location):
    if process_index == 0:
      _build_here(task, split, location, key, units)
    else:
      _wait_for(directory, location, task, split)
    return location
  os.makedirs(os.path.dirname(location), exist_ok=True)
  with prepare.file_lock(os.path.join(os.path.dirname(location), f".{split}-{key}.lock")):
    if directory.read(example_store.MANIFEST) is None:
      _build_here(task, split, location, key, units)
  return location


def _wait_for(directory: store_io.Directory, location: str, task: seqio.Task,
              split: str) -> None:
  seconds = float(os.environ.get(WAIT_ENV, WAIT_SECONDS))
  deadline = time.time() + seconds
  print(f"waiting for process 0 to build the example store of {task.name}/{split} at "
        f"{location}", file=sys.stderr, flush=True)
  while directory.read(example_store.MANIFEST) is None:
    if time.time() > deadline:
      raise store_io.StoreError(
          f"process 0 did not build the example store of {task.name}/{split} at {location} "
          f"within {seconds:.0f} s ({WAIT_ENV}); build it first with `t5jax cache --task "
          f"{task.name} --split {split}`")
    time.sleep(1.0)


def store_of(task: seqio.Task, split: str, process_index: int = 0) -> str:
  """The location of the store of (task, split), built on first use where allowed."""
  cached = _locations.get((id(task), split))
  if cached is None:
    cached = _locations[(id(task), split)] = (task, _ensure(task, split, process_index))
  return cached[1]


def get_store(task: seqio.Task, split: str,
              process_index: int = 0) -> example_store.ExampleStore:
  """The store of (task, split), built on first use (see the module docstring)."""
  return example_store.ExampleStore.open(store_of(task, split, process_index))


def recipe(task: seqio.Task, split: str, lengths: dict,
           process_index: int = 0) -> example_ops.TaskRecipe:
  """The recipe of (task, split) at these lengths; builds the task's store if needed.

  Raises:
    ValueError: (one line) for a per-example step t5jax does not implement, a task without
      `inputs`/`targets`, or lengths too short for span corruption.
  """
  _, post = split_preprocessors(task)
  ops = []
  for i, step in enumerate(post):
    op = _identify(step)
    if op is None or (op[0] in (example_ops.SPAN_CORRUPTION, example_ops.UL2) and i):
      name = getattr(step, "__name__", repr(step))
      raise ValueError(
          f"task {task.name!r} runs {name} after its CacheDatasetPlaceholder; the batch pipeline "
          "runs per example only span_corruption or ul2 (first) and append_eos[_after_trim]: move "
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
  if ops and ops[0][0] == example_ops.UL2:
    # The denoisers at these lengths (checked, one line each), resolved once here with
    # the vocabulary: workers rebuild them from the recipe's JSON alone.
    kwargs = dict(ops[0][1])
    mixture = ul2.mixture(task.output_features["targets"].vocabulary, lengths["inputs"],
                          lengths["targets"], kwargs.get("denoisers", ul2.DEFAULT_DENOISERS),
                          kwargs.get("rates", ul2.DEFAULT_RATES))
    kwargs = {"resolved": [[d.kind, d.mean_span, d.density, d.segment, list(d.mode_ids)]
                           for d in mixture.denoisers],
              "resolved_rates": mixture.rates.tolist()}
    ops[0] = (example_ops.UL2, kwargs)
  return example_ops.TaskRecipe(
      name=task.name, store=store_of(task, split, process_index), ops=tuple(ops),
      lengths={"inputs": int(lengths["inputs"]), "targets": int(lengths["targets"])},
      eos={k: int(f.vocabulary.eos_id) for k, f in task.output_features.items() if f.add_eos},
      vocab_size=int(task.output_features["targets"].vocabulary.vocab_size))
