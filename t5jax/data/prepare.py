"""Prepares the shipped TFDS datasets once per data dir, safely across processes."""

import contextlib
import fcntl
import io
import os
import pathlib
import sys
import threading

import tensorflow_datasets as tfds

from t5jax import store
from t5jax.data import tf_devices
from t5jax.data import tfds_builders

DATA_DIR_ENV = "T5JAX_DATA_DIR"

_lock = threading.Lock()
_prepared: dict[tuple[str, str], tfds.core.DatasetBuilder] = {}


_DEFAULT = pathlib.Path.home() / ".cache/t5jax/tfds"


def data_location() -> str:
  """`$T5JAX_DATA_DIR` if set (a local path, or a `gs://` URL kept as one), else
  `~/.cache/t5jax/tfds`: where example stores live (read at each call)."""
  env = os.environ.get(DATA_DIR_ENV)
  return store.normalize(env) if env else str(_DEFAULT)


def data_dir() -> pathlib.Path:
  """The local directory where the shipped TFDS datasets are prepared: the data dir, or
  `~/.cache/t5jax/tfds` when the data dir is on GCS (the shipped datasets are a few MB; each
  host prepares its own copy, and their example stores go to the data dir)."""
  location = data_location()
  return _DEFAULT if location.startswith("gs://") else pathlib.Path(location)


@contextlib.contextmanager
def file_lock(path: pathlib.Path):
  # An flock serialises preparation between processes on one host; TFDS itself writes into a
  # temporary directory and renames it into place, so readers never see a partial dataset.
  with open(path, "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def prepared_builder(name: str) -> tfds.core.DatasetBuilder:
  """Returns the builder of a shipped dataset, preparing it first if this data dir lacks it.

  Args:
    name: a key of `tfds_builders.BUILDERS`, e.g. "t5jax_multi30k".

  Returns:
    A prepared `tfds.core.DatasetBuilder` reading from `data_dir()`.
  """
  if name not in tfds_builders.BUILDERS:
    raise ValueError(
        f"unknown shipped dataset {name!r}; expected one of {sorted(tfds_builders.BUILDERS)}")
  root = data_dir()
  key = (name, str(root))
  with _lock:
    if key in _prepared:
      return _prepared[key]
    tf_devices.hide_accelerators_from_tf()
    cls = tfds_builders.BUILDERS[name]
    builder = cls(data_dir=str(root))
    if not builder.is_prepared():
      root.mkdir(parents=True, exist_ok=True)
      with file_lock(root / f".{name}.lock"):
        builder = cls(data_dir=str(root))  # Another process may have finished while we waited.
        if not builder.is_prepared():
          tfds.disable_progress_bar()  # Per-split progress bars drown the training logs.
          # One line of ours on stderr instead of TFDS's two on stdout ("Downloading and
          # preparing dataset Unknown size ..."): stdout may be a command's JSON output.
          print(f"Preparing the shipped dataset {name} in {root} (once per data dir).",
                file=sys.stderr, flush=True)
          with contextlib.redirect_stdout(io.StringIO()):
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(try_download_gcs=False))
          builder = cls(data_dir=str(root))  # Reload the info from disk, as every reader does.
    _prepared[key] = builder
    return builder
