"""Writes one shard of an example store, streaming, in memory bounded by one zarr3 object.

`ShardWriter.add(feature, tokens, lengths)` takes batches of examples; tokens are buffered
per feature until a whole sharding object (2^23 tokens, 16 MB at uint16) can be written in
one request, so memory stays at a few tens of MB whatever the shard's size, and GCS sees few
large writes. `commit()` writes the arrays' exact shapes, then the commit record: a shard
without its record is incomplete and is deleted and rewritten by the next build.
"""

from __future__ import annotations

import hashlib

import numpy as np
import tensorstore as ts

from t5jax.store import kvstore
from t5jax.store import layout

# Room for the arrays' shapes while the shard's length is unknown (resized at commit).
_MAX_LENGTH = 1 << 44


class _Array:
  """One growing 1-D zarr3 array, written in whole sharding objects."""

  def __init__(self, location: str, shard: int, feature: str, kind: str, dtype: str):
    self.where = kvstore.join(location, layout.shard_name(shard), f"{feature}.{kind}")
    self.object = layout.TOKENS_OBJECT if kind == "tokens" else layout.OFFSETS_OBJECT
    self.dtype = np.dtype(dtype)
    try:
      self.array = ts.open(
          layout.array_spec(location, shard, feature, kind, dtype, _MAX_LENGTH),
          context=kvstore.context(), create=True, delete_existing=True).result()
    except Exception as e:  # noqa: BLE001
      raise kvstore.explain(self.where, e, "cannot create") from None
    self.written = 0
    self.buffer: list[np.ndarray] = []
    self.buffered = 0
    self.sha256 = hashlib.sha256()

  def append(self, values: np.ndarray) -> None:
    values = values.astype(self.dtype, copy=False)
    self.sha256.update(values.tobytes())
    self.buffer.append(values)
    self.buffered += len(values)
    if self.buffered >= self.object:
      self._flush(final=False)

  def _flush(self, final: bool) -> None:
    data = np.concatenate(self.buffer) if self.buffer else np.zeros([0], self.dtype)
    # Whole objects only (a partial one would be rewritten on every flush), but all at the end.
    n = len(data) if final else len(data) // self.object * self.object
    if n:
      try:
        self.array[self.written:self.written + n].write(data[:n]).result()
      except Exception as e:  # noqa: BLE001
        raise kvstore.explain(self.where, e, "cannot write") from None
    self.written += n
    self.buffer = [data[n:]] if n < len(data) else []
    self.buffered = len(data) - n

  def close(self) -> int:
    self._flush(final=True)
    try:
      self.array.resize(exclusive_max=[self.written], resize_metadata_only=True,
                        shrink_only=True).result()
    except Exception as e:  # noqa: BLE001
      raise kvstore.explain(self.where, e, "cannot finish") from None
    return self.written


class ShardWriter:
  """Writes shard `index` of the store at `location`: `add(...)` batches, then `commit()`."""

  def __init__(self, location: str, index: int, features: list[str], dtype: str):
    self.location, self.index, self.features = location, index, list(features)
    self.tokens = {f: _Array(location, index, f, "tokens", dtype) for f in features}
    self.offsets = {f: _Array(location, index, f, "offsets", "int64") for f in features}
    self.ends = {f: 0 for f in features}
    for f in features:
      self.offsets[f].append(np.zeros([1], np.int64))
    self.num_examples = 0

  def add(self, feature: str, flat: np.ndarray, lengths: np.ndarray) -> None:
    """Appends examples of one feature: their tokens concatenated, and their lengths."""
    self.tokens[feature].append(flat)
    ends = self.ends[feature] + np.cumsum(lengths, dtype=np.int64)
    self.offsets[feature].append(ends)
    if len(ends):
      self.ends[feature] = int(ends[-1])
    if feature == self.features[0]:
      self.num_examples += len(lengths)

  def commit(self, extra: dict | None = None) -> dict:
    """Finishes the arrays, then writes the commit record; returns the record."""
    record = {"shard": self.index, "num_examples": self.num_examples, "num_tokens": {},
              "sha256": {}, "bytes": 0, **(extra or {})}
    for f in self.features:
      record["num_tokens"][f] = self.tokens[f].close()
      self.offsets[f].close()
      record["sha256"][f] = self.tokens[f].sha256.hexdigest()
      record["bytes"] += record["num_tokens"][f] * self.tokens[f].dtype.itemsize + \
          (self.num_examples + 1) * 8
    kvstore.Directory(self.location).write_json(layout.commit_key(self.index), record)
    return record
