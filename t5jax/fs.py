"""A run's files on local disk or in a bucket: every path a run reads or writes goes here.

A path is a local path (relative to the working directory, absolute, or with ~) or a
`gs://BUCKET/PATH` URL, and stays a URL: `os.path.abspath("gs://b/run")` is the local folder
`./gs:/b/run`, so nothing here passes a URL to `os.path` or `open`. Underneath is etils'
`epath`, the path library Orbax itself uses, with fsspec's `gcsfs` behind `gs://` (not
TensorFlow's GCS filesystem, which cannot be pointed at another server; docs/design.md,
"Run directories in a bucket"). Orbax writes checkpoint arrays through TensorStore, whose own
GCS driver the same settings reach.

`STORAGE_EMULATOR_HOST` (the variable Google's client libraries honour) sends every `gs://`
access, checkpoints, logs and example stores alike, to that server, e.g. a GCS API server on
localhost.

A GCS object cannot be appended to: `append_text` writes the new lines as an object of their
own and composes it onto the end of the file (GCS's server-side concatenation), so a killed
writer loses at most the lines it was appending.

Failures are one-line `StorageError`s that name the path and the fix.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import sys
import tempfile
import time
import uuid

GCS = "gs://"
SUPPORTED = "a local path or gs://BUCKET/PATH"
# How long a transient gs:// failure (connection refused, timeouts, 5xx) is retried before
# it is an error: gcsfs tries a request 6 times, 1, 2, 4, 8 and 16 s apart (about 31 s);
# TensorStore (checkpoint arrays, example stores) gets the same schedule (retries()).
RETRIES_ENV = "T5JAX_GCS_RETRIES"
DEFAULT_RETRIES = 5


class StorageError(OSError):
  """A run's file could not be read or written; the message is one line with the fix."""


def _configure() -> None:
  """Before epath, gcsfs or TensorStore first touch gs://: route them all alike."""
  # epath picks TensorFlow's GCS filesystem when TensorFlow is installed (SeqIO brings it);
  # gcsfs instead: it honours STORAGE_EMULATOR_HOST and is what epath uses without TF.
  os.environ.setdefault("EPATH_USE_TF", "false")
  # gcsfs would ask GCS's control plane (gRPC, credentials) about each bucket's layout for
  # hierarchical-namespace buckets; plain object requests serve every bucket.
  os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
  host = os.environ.get("STORAGE_EMULATOR_HOST")
  if host:  # TensorStore's name for the same setting, which it reads at its first request
    os.environ["TENSORSTORE_GCS_HTTP_URL"] = host if "://" in host else f"http://{host}"
  # gcsfs logs a traceback per retried request, and fsspec's read-ahead (its prefetcher)
  # one per failed read; a failure is reported once, in one line.
  for name in ("gcsfs", "fsspec"):
    logging.getLogger(name).setLevel(logging.CRITICAL)
  import fsspec  # pylint: disable=g-import-not-at-top
  for protocol in ("gcs", "gs"):
    # Several hosts write one run: a listing must never come from a stale cache.
    fsspec.config.conf.setdefault(protocol, {})["use_listings_cache"] = False
  sys.unraisablehook = _without_late_storage_callbacks(sys.unraisablehook)


def _without_late_storage_callbacks(hook):
  """`hook`, but silent about one harmless case: a TensorStore write that a run gave up on
  (a save abandoned during a storage outage, already reported in one line) completes later
  on TensorStore's own thread and hands its result to the asyncio loop that awaited it, closed
  by then; TensorStore reports that RuntimeError as unraisable, with a traceback."""
  def filtered(unraisable):
    error, tb = unraisable.exc_value, unraisable.exc_traceback
    while tb is not None and tb.tb_next is not None:
      tb = tb.tb_next
    if (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"
        and unraisable.object is None and tb is not None
        and tb.tb_frame.f_code.co_filename.endswith(os.path.join("asyncio", "base_events.py"))):
      return
    hook(unraisable)
  return filtered


_configure()

from etils import epath  # noqa: E402  (after _configure)


def retries() -> int:
  """Retries of a failed gs:// request (T5JAX_GCS_RETRIES, default 5: about 31 s)."""
  return int(os.environ.get(RETRIES_ENV, DEFAULT_RETRIES))


def tensorstore_retries() -> dict:
  """TensorStore's `gcs_request_retries` for the same bound as gcsfs's."""
  return {"max_retries": retries(), "initial_delay": "1s", "max_delay": "32s"}


def is_gcs(path) -> bool:
  return str(path).startswith(GCS)


def check(path, what: str = "path") -> str:
  """`path` if its scheme is supported: local, or gs://BUCKET[/PATH].

  Raises:
    ValueError: another scheme (s3://, http://, ...), a gs:// URL without a bucket, or one
      that lost a slash (gs:/b, which would become a local folder named gs:).
  """
  text = str(path)
  if "://" in text and not is_gcs(text):
    scheme = text.split("://", 1)[0]
    raise ValueError(f"{what} {text}: {scheme}:// is not supported; give {SUPPORTED}.")
  if is_gcs(text) and not text[len(GCS):].split("/", 1)[0]:
    raise ValueError(f"{what} {text} names no bucket; write gs://BUCKET/PATH.")
  if text.startswith("gs:/") and not is_gcs(text):
    raise ValueError(f"{what} {text} looks like a gs:// URL that lost a slash; write "
                     "gs://BUCKET/PATH.")
  return text


def absolute(path) -> str:
  """A URL as a URL (no trailing slash), a local path made absolute (~ expanded)."""
  text = check(path)
  if is_gcs(text):
    return text.rstrip("/")
  return os.path.abspath(os.path.expanduser(text))


def join(base, *parts: str) -> str:
  base = absolute(base)
  return posixpath.join(base, *parts) if is_gcs(base) else os.path.join(base, *parts)


def parent(path) -> str:
  path = absolute(path)
  return posixpath.dirname(path) if is_gcs(path) else os.path.dirname(path)


def basename(path) -> str:
  return posixpath.basename(absolute(path))


def bucket(path) -> str:
  """The bucket of a gs:// URL."""
  return absolute(path)[len(GCS):].split("/", 1)[0]


def _gcs():
  import fsspec  # pylint: disable=g-import-not-at-top
  return fsspec.filesystem("gcs")


def _describe(error: BaseException) -> str:
  text = " ".join(str(error).split())
  return text or type(error).__name__


def explain(path, error: BaseException, doing: str) -> StorageError:
  """A one-line StorageError for a failure while `doing` something with `path`."""
  if isinstance(error, StorageError):
    return error
  return StorageError(f"{doing} {path}: {reason(path, error)}.")


def reason(path, error: BaseException) -> str:
  """What went wrong with `path`, and what to do about it, in a few words."""
  path = str(path)
  if isinstance(error, StorageError):
    return str(error).rstrip(".")
  text = _describe(error)
  low = text.lower()
  emulator = os.environ.get("STORAGE_EMULATOR_HOST")
  if is_gcs(path) and ("connect" in low or "unavailable" in low or "timeout" in low
                       or "timed out" in low or "deadline" in low or "resolve" in low
                       or "503" in text or "502" in text or "500" in text):
    return ("the GCS server cannot be reached" +
            (f" at STORAGE_EMULATOR_HOST={emulator}" if emulator else "") +
            " (each request is retried for about 30 s): check the network and run again")
  if is_gcs(path) and ("credential" in low or "401" in text or "403" in text
                       or "permission" in low or "unauthenticated" in low):
    return ("no GCS credentials with access: run `gcloud auth application-default login` or "
            "set GOOGLE_APPLICATION_CREDENTIALS (the account needs roles/storage.objectAdmin "
            "on the bucket)")
  if is_gcs(path) and isinstance(error, FileNotFoundError) and not _bucket_exists(path):
    return (f"bucket gs://{bucket(path)} does not exist: create it (gcloud storage buckets "
            f"create gs://{bucket(path)}) or give another")
  if isinstance(error, FileNotFoundError):
    return "it does not exist"
  if isinstance(error, (PermissionError, NotADirectoryError, FileExistsError)):
    return f"{error.strerror or text}: give another path or fix its permissions"
  if "no space left" in low:
    return "the disk is full: free space or give another path"
  return text[:300]


def _bucket_exists(path) -> bool:
  try:
    return _gcs().exists(bucket(path))
  except Exception:  # noqa: BLE001 - unreachable: explain() says so from the first error
    return True


def _call(path, doing: str, fn, *args):
  try:
    return fn(*args)
  except Exception as e:  # noqa: BLE001 - every failure becomes one line
    raise explain(path, e, doing) from None


def path_of(path) -> epath.Path:
  """The epath.Path of a local path or URL (for libraries that take one, as Orbax does)."""
  return epath.Path(absolute(path))


def exists(path) -> bool:
  return _call(path, "cannot read", lambda: path_of(path).exists())


def isdir(path) -> bool:
  return _call(path, "cannot read", lambda: path_of(path).is_dir())


def isfile(path) -> bool:
  return _call(path, "cannot read", lambda: path_of(path).is_file())


def listdir(path) -> list[str]:
  """The names directly under a directory, sorted."""
  return sorted(_call(path, "cannot list", lambda: [p.name for p in path_of(path).iterdir()]))


def read_bytes(path) -> bytes:
  return _call(path, "cannot read", lambda: path_of(path).read_bytes())


def read_text(path) -> str:
  return read_bytes(path).decode("utf-8")


def write_bytes(path, data: bytes) -> None:
  """Writes a whole file atomically: a reader sees the old bytes or all the new ones (a GCS
  object write is atomic; on disk a temporary file is renamed over the target)."""
  path = absolute(path)
  if is_gcs(path):
    _call(path, "cannot write", lambda: path_of(path).write_bytes(data))
    return
  def write():
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with open(temporary, "wb") as f:
      f.write(data)
    os.replace(temporary, path)
  _call(path, "cannot write", write)


def write_text(path, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def append_bytes(path, data: bytes) -> None:
  """Adds `data` at the end of a file (made if absent). In a bucket: the data goes up as an
  object of its own, then GCS composes the file and it into the file, atomically."""
  path = absolute(path)
  if not is_gcs(path):
    def append():
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path, "ab") as f:
        f.write(data)
    _call(path, "cannot write", append)
    return
  def compose():
    gcs = _gcs()
    target = path[len(GCS):]
    if not gcs.exists(target):
      gcs.pipe_file(target, data)
      return
    part = f"{target}.append-{uuid.uuid4().hex[:12]}"
    gcs.pipe_file(part, data)
    try:
      gcs.merge(target, [target, part])
    finally:
      gcs.rm_file(part)
  _call(path, "cannot write", compose)


def append_text(path, text: str) -> None:
  append_bytes(path, text.encode("utf-8"))


def rename(source, target) -> None:
  """Moves a file or directory (in a bucket: every object under it, copied then deleted)."""
  source, target = absolute(source), absolute(target)
  if is_gcs(source):
    _call(source, "cannot move", lambda: _gcs().mv(source[len(GCS):], target[len(GCS):],
                                                    recursive=True))
  else:
    _call(source, "cannot move", os.rename, source, target)


def copy_file(source, target) -> None:
  write_bytes(target, read_bytes(source))


def local_copy(path) -> str:
  """A local file holding the bytes of `path` (`path` itself when local), for libraries
  that read only local files (SentencePiece)."""
  path = absolute(path)
  if not is_gcs(path):
    return path
  data = read_bytes(path)
  local = os.path.join(tempfile.gettempdir(), "t5jax-files",
                       hashlib.sha256(data).hexdigest()[:16], basename(path))
  if not os.path.isfile(local):
    write_bytes(local, data)
  return local


def makedirs(path) -> None:
  """Creates a local directory and its parents; in a bucket there are no directories."""
  path = absolute(path)
  if not is_gcs(path):
    _call(path, "cannot create", lambda: os.makedirs(path, exist_ok=True))


def check_writable(directory, what: str = "Directory") -> None:
  """Fails at once, before anything is computed, if nothing can be written under
  `directory`: a missing bucket, an unreachable server, no credentials, a read-only disk.

  Raises:
    StorageError: one line naming `what`, the directory and the fix.
  """
  directory = absolute(directory)
  probe = join(directory, f".write_probe_{os.uname().nodename}_{os.getpid()}_{time.time_ns()}")
  try:
    if is_gcs(probe):
      _gcs().pipe_file(probe[len(GCS):], b"ok")
      _gcs().rm_file(probe[len(GCS):])
    else:
      os.makedirs(directory, exist_ok=True)
      with open(probe, "wb") as f:
        f.write(b"ok")
      os.remove(probe)
  except Exception as e:  # noqa: BLE001 - every failure becomes one line
    raise StorageError(f"{what} {directory} is not writable: {reason(directory, e)}.") from None
