"""A SeqIO task's example store: where it lives, and who builds it when (`ensure`).

A task's preprocessors up to its cache point (`task_steps`) run once per (task, split),
through SeqIO itself, into a store (`t5jax.store`) under the data dir (`$T5JAX_DATA_DIR`, a
local path or a `gs://` URL), keyed by a `fingerprint` of what made it. Who builds it:

* `t5jax cache` (`build=Build(...)`): Beam's local workers or another runner, whatever the
  source's size;
* else a source up to `AUTO_BUILD_BYTES` is built on first use (the shipped tasks, small user
  tasks): on local disk by the first process of each host (under a file lock), on GCS by
  process 0 while the other processes wait for its manifest;
* a larger source is refused in one line: run `t5jax cache` first.

A source whose content cannot be fingerprinted (a `seqio.FunctionDataSource`) is read again
in each process into a temporary directory.
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import shutil
import sys
import tempfile
import time

import seqio

from t5jax import store
from t5jax.data import fingerprint
from t5jax.data import prepare
from t5jax.data import source_units

# Sources up to this size build on first use; larger ones need `t5jax cache`.
AUTO_BUILD_ENV = "T5JAX_AUTO_BUILD_BYTES"
AUTO_BUILD_BYTES = 256 << 20
# How long processes other than 0 wait for process 0 to build a store on GCS.
WAIT_ENV = "T5JAX_STORE_WAIT_SECONDS"
WAIT_SECONDS = 3600


@dataclasses.dataclass(frozen=True)
class Build:
  """How `t5jax cache` builds a store, whatever its source's size.

  Attributes:
    workers: local worker processes of Beam's DirectRunner; 0 builds in this process.
    runner: another Beam runner (e.g. "DataflowRunner"), with its `options` (["--project=..",
      ...]); its workers must have t5jax and the user's modules installed.
    modules: the user's modules that register the task, imported by each worker.
    progress_seconds: seconds between progress lines.
    rebuild: delete the store first.
  """
  workers: int = 2
  runner: str | None = None
  options: tuple = ()
  modules: tuple = ()
  progress_seconds: float = 10.0
  rebuild: bool = False


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


def _location(task: seqio.Task, split: str, key: str) -> str:
  """Where the store of (task, split) of fingerprint `key` lives under the data dir."""
  return store.join(prepare.data_location(), "t5jax_examples", task.name, f"{split}-{key}")


_temporary_root: list[str] = []


def _temporary_dir() -> str:
  if not _temporary_root:
    _temporary_root.append(tempfile.mkdtemp(prefix="t5jax-examples-"))
    atexit.register(shutil.rmtree, _temporary_root[0], ignore_errors=True)
  return _temporary_root[0]


# (id(task), split) -> (task, location); the task is kept so that its id is not reused.
_locations: dict[tuple[int, str], tuple[seqio.Task, str]] = {}


def forget() -> None:
  """Forgets where each task's store was found: the next `ensure` looks again (in the data
  dir of that moment)."""
  _locations.clear()


def ensure(task: seqio.Task, split: str, process_index: int = 0,
           build: Build | None = None) -> store.ExampleStore:
  """The store of (task, split), built first where it has none (see the module docstring).

  Args:
    process_index: this process's index; on GCS, only process 0 builds on first use.
    build: `t5jax cache`'s build (any size; resumes, or finds the store complete); None
      builds on first use, in this process, a source up to `AUTO_BUILD_BYTES`.

  Raises:
    store.StoreError: (one line) a source too large to build on first use, a store that
      process 0 did not build in time, or one that cannot be read or written.
    ValueError: (one line) a source that cannot be read, or `build` of a function source.
  """
  found = _locations.get((id(task), split))
  if found is None or build is not None:
    location = (_first_use(task, split, process_index) if build is None
                else _build(task, split, build))
    found = _locations[(id(task), split)] = (task, location)
  return store.ExampleStore.open(found[1])


def _build(task: seqio.Task, split: str, build: Build) -> str:
  key = fingerprint.fingerprint(task, split)
  if key is None:
    raise ValueError(
        f"task {task.name!r} reads a function source, whose content t5jax cannot "
        "fingerprint, so its store is rebuilt by each run; give it a file or TFDS source")
  location = _location(task, split, key)
  if build.rebuild:
    store.delete(location)
  units = source_units.plan(task, split)
  in_process = build.workers == 0 and not build.runner
  # Each local worker is one core (tf.data would otherwise give each of them all cores).
  threads = 1 if build.workers and not build.runner else 0
  examples = source_units.UnitExamples(task.name, split, tuple(build.modules), threads,
                                       os.getcwd(), task if in_process else None)
  store.build(store.Job(task.name, split, location, key, examples), units,
              workers=build.workers, runner=build.runner, options=tuple(build.options),
              progress_seconds=build.progress_seconds)
  return location


def _build_here(task: seqio.Task, split: str, location: str, key: str,
                units: list[dict]) -> None:
  examples = source_units.UnitExamples(task.name, split, task=task)
  store.build(store.Job(task.name, split, location, key, examples), units, workers=0,
              progress_seconds=30.0)


def _first_use(task: seqio.Task, split: str, process_index: int) -> str:
  """The location of a complete store of (task, split), built here if it may be."""
  key = fingerprint.fingerprint(task, split)
  if key is None:
    location = os.path.join(_temporary_dir(), f"{task.name}-{id(task)}", split)
    _build_here(task, split, location, "temporary", source_units.plan(task, split))
    return location
  location = _location(task, split, key)
  if store.exists(location):
    return location
  units = source_units.plan(task, split)
  size = source_bytes(task, units)
  limit = int(os.environ.get(AUTO_BUILD_ENV, AUTO_BUILD_BYTES))
  if size is not None and size > limit:
    raise store.StoreError(
        f"task {task.name!r} split {split!r} has no example store at {location} and its source "
        f"({size / 2**20:.0f} MB) is over the {limit / 2**20:.0f} MB built on first use; build "
        f"it first: t5jax cache --task {task.name} --split {split} [--module YOUR_MODULE]")
  if store.is_gcs(location):
    if process_index == 0:
      _build_here(task, split, location, key, units)
    else:
      _wait_for(location, task, split)
    return location
  os.makedirs(os.path.dirname(location), exist_ok=True)
  with prepare.file_lock(os.path.join(os.path.dirname(location), f".{split}-{key}.lock")):
    if not store.exists(location):
      _build_here(task, split, location, key, units)
  return location


def _wait_for(location: str, task: seqio.Task, split: str) -> None:
  seconds = float(os.environ.get(WAIT_ENV, WAIT_SECONDS))
  deadline = time.time() + seconds
  print(f"waiting for process 0 to build the example store of {task.name}/{split} at "
        f"{location}", file=sys.stderr, flush=True)
  while not store.exists(location):
    if time.time() > deadline:
      raise store.StoreError(
          f"process 0 did not build the example store of {task.name}/{split} at {location} "
          f"within {seconds:.0f} s ({WAIT_ENV}); build it first with `t5jax cache --task "
          f"{task.name} --split {split}`")
    time.sleep(1.0)
