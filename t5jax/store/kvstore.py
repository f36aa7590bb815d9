"""The store's bottom layer: a local directory or a `gs://` URL, reached through TensorStore.

Every byte of a store goes through a TensorStore key-value store (`file` for local paths,
`gcs` for `gs://bucket/prefix`), so the same code reads a store on the host's disk and one on
GCS where it lies, with TensorStore's concurrent requests, retries with backoff and a bounded
chunk cache. `STORAGE_EMULATOR_HOST` (the variable Google's client libraries honour) points
the `gcs` driver at another server, e.g. a GCS API server on localhost.

Failures are turned into one-line `StoreError`s that name the location and the fix
(`explain`).
"""

from __future__ import annotations

import json
import os
import posixpath

import tensorstore as ts

GCS_PREFIX = "gs://"
# A per-process bound on the chunks TensorStore keeps for repeated reads.
CACHE_BYTES = 64 << 20
# Retries of a failed GCS request (with exponential backoff from 0.1 s to 8 s).
RETRIES_ENV = "T5JAX_GCS_RETRIES"
RETRIES = 8


class StoreError(OSError):
  """A store could not be read or written; the message is one line with the fix."""


def is_gcs(location: str) -> bool:
  return str(location).startswith(GCS_PREFIX)


def normalize(location) -> str:
  """An absolute local path, or a `gs://bucket/prefix` URL kept as a URL (never a path)."""
  text = str(location)
  if is_gcs(text):
    bucket, _, prefix = text[len(GCS_PREFIX):].partition("/")
    if not bucket:
      raise StoreError(f"{text!r} names no bucket; write gs://BUCKET/PATH")
    return GCS_PREFIX + bucket + ("/" + prefix.strip("/") if prefix.strip("/") else "")
  if text.startswith("gs:/"):
    # pathlib turns "gs://b/x" into "gs:/b/x"; refuse it rather than write a local directory.
    raise StoreError(f"{text!r} looks like a mangled gs:// URL; pass it as gs://BUCKET/PATH")
  return os.path.abspath(os.path.expanduser(text))


def join(location: str, *parts: str) -> str:
  if is_gcs(location):
    return posixpath.join(location, *parts)
  return os.path.join(location, *parts)


def _emulator() -> None:
  # TensorStore reads TENSORSTORE_GCS_HTTP_URL once per process, at its first gcs request.
  host = os.environ.get("STORAGE_EMULATOR_HOST")
  if host and "TENSORSTORE_GCS_HTTP_URL" not in os.environ:
    os.environ["TENSORSTORE_GCS_HTTP_URL"] = host if "://" in host else "http://" + host


def kvstore_spec(location: str) -> dict:
  """The TensorStore kvstore spec of a directory (trailing slash: a prefix of keys)."""
  location = normalize(location)
  if is_gcs(location):
    _emulator()
    bucket, _, prefix = location[len(GCS_PREFIX):].partition("/")
    return {"driver": "gcs", "bucket": bucket, "path": prefix + "/" if prefix else ""}
  return {"driver": "file", "path": location.rstrip("/") + "/"}


_context: list[ts.Context] = []


def context() -> ts.Context:
  """One TensorStore context per process: a bounded cache and retried GCS requests."""
  if not _context:
    _context.append(ts.Context({
        "cache_pool": {"total_bytes_limit": CACHE_BYTES},
        "gcs_request_retries": {"max_retries": int(os.environ.get(RETRIES_ENV, RETRIES)),
                                "initial_delay": "0.1s", "max_delay": "8s"},
    }))
  return _context[0]


def explain(location: str, error: BaseException, doing: str) -> StoreError:
  """A one-line StoreError for a failure while `doing` something at `location`."""
  text = " ".join(str(error).split())
  low = text.lower()
  if "no space left" in low or "enospc" in low or "disk quota" in low:
    fix = "the disk is full: free space or pass another data dir (T5JAX_DATA_DIR)"
  elif is_gcs(location) and ("connect" in low or "unavailable" in low or "resolve" in low
                             or "timed out" in low or "deadline" in low):
    fix = ("the GCS server cannot be reached: check the network"
           + (f" (STORAGE_EMULATOR_HOST={os.environ['STORAGE_EMULATOR_HOST']})"
              if os.environ.get("STORAGE_EMULATOR_HOST") else ""))
  elif is_gcs(location) and ("credential" in low or "401" in text or "403" in text
                             or "permission" in low or "unauthenticated" in low):
    fix = ("no GCS credentials with access: run `gcloud auth application-default login` "
           "or set GOOGLE_APPLICATION_CREDENTIALS")
  elif is_gcs(location) and ("bucket" in low and ("not found" in low or "not exist" in low)
                             or "404" in text):
    fix = f"the bucket does not exist: create it (gcloud storage buckets create gs://" \
          f"{location[len(GCS_PREFIX):].split('/')[0]}) or use another data dir"
  elif "checksum" in low or "crc32c" in low:
    fix = "its bytes do not match their checksum: rebuild it with `t5jax cache --rebuild`"
  elif "permission denied" in low:
    fix = "permission denied: make it writable or use another data dir (T5JAX_DATA_DIR)"
  else:
    fix = text[:300]
  return StoreError(f"{doing} {location}: {fix}")


class Directory:
  """Small objects (JSON records) under one location, through a TensorStore kvstore."""

  def __init__(self, location: str):
    self.location = normalize(location)
    self._kv = None

  def _store(self) -> ts.KvStore:
    if self._kv is None:
      try:
        self._kv = ts.KvStore.open(kvstore_spec(self.location), context=context()).result()
      except Exception as e:  # noqa: BLE001 - every failure becomes one line
        raise explain(self.location, e, "cannot open") from None
    return self._kv

  def read(self, key: str) -> bytes | None:
    """The object's bytes, or None if it does not exist."""
    try:
      result = self._store().read(key).result()
    except Exception as e:  # noqa: BLE001
      raise explain(join(self.location, key), e, "cannot read") from None
    return bytes(result.value) if result.state == "value" else None

  def write(self, key: str, value: bytes) -> None:
    """Writes one object atomically (a reader sees all of it or none)."""
    try:
      self._store().write(key, value).result()
    except Exception as e:  # noqa: BLE001
      raise explain(join(self.location, key), e, "cannot write") from None

  def read_json(self, key: str):
    data = self.read(key)
    return None if data is None else json.loads(data)

  def write_json(self, key: str, value) -> None:
    self.write(key, json.dumps(value, indent=1, sort_keys=True).encode())

  def list(self, prefix: str = "") -> list[str]:
    """Keys under `prefix`, sorted."""
    try:
      keys = self._store().list(ts.KvStore.KeyRange(prefix, _prefix_end(prefix))).result()
    except Exception as e:  # noqa: BLE001
      raise explain(join(self.location, prefix), e, "cannot list") from None
    return sorted(k.decode() if isinstance(k, bytes) else k for k in keys)

  def delete_prefix(self, prefix: str) -> None:
    """Deletes every key under `prefix` (a shard left half-written by a killed build)."""
    try:
      self._store().delete_range(ts.KvStore.KeyRange(prefix, _prefix_end(prefix))).result()
    except Exception as e:  # noqa: BLE001
      raise explain(join(self.location, prefix), e, "cannot delete") from None


def _prefix_end(prefix: str) -> str:
  """The first key after every key that starts with `prefix` ("" means no end)."""
  if not prefix:
    return ""
  return prefix[:-1] + chr(ord(prefix[-1]) + 1)
