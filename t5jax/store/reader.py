"""Random access to a store's tokenized examples: a sharded, jagged token store.

The store's files are `layout`'s, read through TensorStore where they lie (`kvstore`). Only
a manifest makes a store: a build killed half way leaves none, and its committed shards are
kept for the resume (`beam_build`).

Example `i` of the split is row `i - first[s]` of shard `s = searchsorted(first, i)`:
O(log shards). Small local stores are read whole into memory at open (fast slicing for the
shipped tasks); others are read per batch, every request of a batch in flight at once.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorstore as ts

from t5jax.store import layout
from t5jax.store import kvstore

# Local stores up to this size are read whole into memory when opened.
IN_MEMORY_BYTES_ENV = "T5JAX_STORE_IN_MEMORY_BYTES"
IN_MEMORY_BYTES = 32 << 20


def exists(location) -> bool:
  """Whether a complete store (one with a manifest) is at `location`."""
  return kvstore.Directory(location).read(layout.MANIFEST) is not None


@dataclasses.dataclass
class _Shard:
  index: int
  tokens: dict      # feature -> ts.TensorStore, or np.ndarray when in memory
  offsets: dict     # feature -> ts.TensorStore [rows + 1], or np.ndarray when in memory


class ExampleStore:
  """A split's stored examples: `num_examples`, `examples(feature, ids)`, `stream(...)`."""

  def __init__(self, location: str, manifest: dict):
    self.location = location
    self.manifest = manifest
    self.features = list(manifest["features"])
    self.num_examples = int(manifest["num_examples"])
    shards = manifest["shards"]
    rows = np.array([s["num_examples"] for s in shards], np.int64)
    # first[s]: the split's index of shard s's first example (and likewise for tokens).
    self._first = np.concatenate([[0], np.cumsum(rows)])
    self._first_token = {
        f: np.concatenate([[0], np.cumsum([s["num_tokens"][f] for s in shards])]).astype(np.int64)
        for f in self.features}
    self._shards: dict[int, _Shard] = {}
    limit = int(os.environ.get(IN_MEMORY_BYTES_ENV, IN_MEMORY_BYTES))
    self.in_memory = not kvstore.is_gcs(location) and int(manifest["bytes"]) <= limit

  def num_tokens(self, feature: str) -> int:
    return int(self._first_token[feature][-1])

  def first_token(self, feature: str, shard: int) -> int:
    """Where shard `shard`'s tokens of `feature` start in the split's concatenated stream."""
    return int(self._first_token[feature][shard])

  @classmethod
  def open(cls, location) -> "ExampleStore":
    """Opens a complete store (one with a manifest).

    Raises:
      kvstore.StoreError: (one line) no manifest, an old format, or an unreadable location.
    """
    location = kvstore.normalize(location)
    directory = kvstore.Directory(location)
    manifest = directory.read_json(layout.MANIFEST)
    if manifest is None:
      if directory.read("info.json") is not None:
        raise kvstore.StoreError(
            f"{location} is an example store of t5jax's old format (one .npy per feature); "
            "delete it and run `t5jax cache` (or train: small stores rebuild on first use)")
      raise kvstore.StoreError(
          f"no example store at {location} (no {layout.MANIFEST}: never built, or its build did "
          "not finish); run `t5jax cache --task TASK --split SPLIT`")
    if manifest.get("format") != layout.FORMAT:
      hint = layout.rebuild_hint(manifest.get("task"), manifest.get("split"))
      raise kvstore.StoreError(
          f"{location} is an example store of format {manifest.get('format')}, this t5jax "
          f"reads format {layout.FORMAT}; run `{hint}`")
    return cls(location, manifest)

  def _shard(self, s: int) -> _Shard:
    shard = self._shards.get(s)
    if shard is not None:
      return shard
    record = self.manifest["shards"][s]
    tokens, offsets = {}, {}
    try:
      for f in self.features:
        for kind, dtype, into, length in (
            ("offsets", "int64", offsets, record["num_examples"] + 1),
            ("tokens", self.manifest["dtype"], tokens, record["num_tokens"][f])):
          # A committed shard never changes: what was cached since this open is not
          # revalidated (on GCS, a request saved per cached chunk and shard index).
          arr = ts.open({**layout.array_spec(self.location, s, f, kind, dtype),
                         "recheck_cached_data": "open", "recheck_cached_metadata": "open"},
                        context=kvstore.context(), open=True).result()
          if arr.shape != (length,):
            raise ValueError(f"{f}.{kind} has shape {arr.shape}, the manifest says ({length},):"
                             " it does not match")
          into[f] = arr.read().result() if self.in_memory else arr
    except Exception as e:  # noqa: BLE001 - every failure becomes one line
      raise self._error(s, e) from None
    shard = self._shards[s] = _Shard(s, tokens, offsets)
    return shard

  def _error(self, s: int, error: BaseException) -> kvstore.StoreError:
    """One line for a shard that cannot be read: missing or damaged ones name the rebuild."""
    where = kvstore.join(self.location, layout.shard_name(s))
    text = " ".join(str(error).split())
    low = text.lower()
    if any(k in low for k in ("not found", "not_found", "does not match", "digest", "data_loss",
                              "checksum")):
      return kvstore.StoreError(
          f"cannot read shard {where} of the manifest ({text[:200]}); run "
          f"`{layout.rebuild_hint(self.manifest['task'], self.manifest['split'])}`")
    return kvstore.explain(where, error, "cannot read shard")

  def _read(self, parts: list[tuple[_Shard, str, int, int]]) -> list[np.ndarray]:
    """Token ranges [(shard, feature, start, stop)] as int32 arrays, read concurrently."""
    out: list = [None] * len(parts)
    pending = []
    for i, (shard, feature, start, stop) in enumerate(parts):
      arr = shard.tokens[feature]
      if isinstance(arr, np.ndarray):
        out[i] = arr[start:stop].astype(np.int32)
      elif stop > start:
        pending.append((i, arr[start:stop].read()))
      else:
        out[i] = np.zeros([0], np.int32)
    for i, future in pending:
      try:
        out[i] = future.result().astype(np.int32)
      except Exception as e:  # noqa: BLE001
        raise self._error(parts[i][0].index, e) from None
    return out

  def examples(self, feature: str, ids) -> list[np.ndarray]:
    """The tokens of examples `ids` (split indices), int32, read in one batch."""
    ids = np.asarray(ids, np.int64)
    if len(ids) and (ids.min() < 0 or ids.max() >= self.num_examples):
      raise IndexError(f"example ids must be in [0, {self.num_examples}); got {ids.min()}.."
                       f"{ids.max()}")
    shard_of = np.searchsorted(self._first, ids, side="right") - 1
    rows = ids - self._first[shard_of]
    bounds = np.zeros([len(ids), 2], np.int64)
    pending = []
    for s in np.unique(shard_of):
      shard, sel = self._shard(int(s)), np.nonzero(shard_of == s)[0]
      off = shard.offsets[feature]
      if isinstance(off, np.ndarray):
        bounds[sel] = np.stack([off[rows[sel]], off[rows[sel] + 1]], 1)
      else:  # One request for the shard's rows' offsets, all shards' requests in flight.
        pending.append((sel, off[np.concatenate([rows[sel], rows[sel] + 1])].read()))
    for sel, future in pending:
      try:
        both = future.result()
      except Exception as e:  # noqa: BLE001
        raise self._error(int(shard_of[sel[0]]), e) from None
      bounds[sel] = np.stack([both[:len(sel)], both[len(sel):]], 1)
    return self._read([(self._shards[int(s)], feature, int(a), int(b))
                       for s, (a, b) in zip(shard_of, bounds)])

  def tokens(self, feature: str, index: int) -> np.ndarray:
    return self.examples(feature, [index])[0]

  def stream(self, feature: str, starts, stops) -> list[np.ndarray]:
    """Ranges [start, stop) of the split's examples' tokens read as one concatenated stream."""
    first = self._first_token[feature]
    parts, owners = [], []
    for j, (start, stop) in enumerate(zip(np.asarray(starts, np.int64),
                                          np.asarray(stops, np.int64))):
      stop = min(int(stop), int(first[-1]))
      s = int(np.searchsorted(first, start, side="right") - 1)
      while start < stop:
        end = min(stop, int(first[s + 1]))
        parts.append((self._shard(s), feature, int(start - first[s]), int(end - first[s])))
        owners.append(j)
        start, s = end, s + 1
    pieces = self._read(parts)
    out = [[] for _ in range(len(np.asarray(starts)))]
    for j, piece in zip(owners, pieces):
      out[j].append(piece)
    return [np.concatenate(p) if p else np.zeros([0], np.int32) for p in out]
