"""A store's layout: its keys, its arrays' zarr3 specs and its format, which the reader, the
writer and the build share.

A store is a directory, on local disk or at a `gs://` URL (`kvstore`):

    plan.json                    what the build will write (task, split, units, fingerprint)
    shard-00000/targets.tokens   zarr3 array: the shard's examples' tokens, concatenated
    shard-00000/targets.offsets  zarr3 array, int64 [rows + 1]: where each example starts
    commits/shard-00000.json     written when the shard is complete (counts, sha256)
    manifest.json                written last: the shards, counts, fingerprint

Tokens are uint16 where the vocabulary fits (T5's 32,128 ids), uint32 otherwise (mT5's
250k). Each array is one zarr3 "sharding" object per 2^23 tokens (2^18 offsets), made of
4,096-token chunks with a crc32c each, so that a random read fetches a few KB, and a torn or
damaged chunk fails its checksum instead of being read.
"""

from __future__ import annotations

from t5jax.store import kvstore

FORMAT = 2
MANIFEST = "manifest.json"
PLAN = "plan.json"
COMMITS = "commits/"
# Tokens per zarr3 sharding object and per chunk inside it; offsets likewise.
TOKENS_OBJECT, TOKENS_CHUNK = 1 << 23, 1 << 12
OFFSETS_OBJECT, OFFSETS_CHUNK = 1 << 18, 1 << 9


def token_dtype(vocab_size: int) -> str:
  return "uint16" if vocab_size <= 1 << 16 else "uint32"


def shard_name(index: int) -> str:
  return f"shard-{index:05d}"


def array_spec(location: str, shard: int, feature: str, kind: str, dtype: str,
               length: int | None = None) -> dict:
  """TensorStore spec of one shard's `kind` ("tokens"/"offsets") array of `feature`."""
  obj, chunk = (TOKENS_OBJECT, TOKENS_CHUNK) if kind == "tokens" else (OFFSETS_OBJECT,
                                                                      OFFSETS_CHUNK)
  spec = {
      "driver": "zarr3",
      "kvstore": kvstore.kvstore_spec(
          kvstore.join(location, shard_name(shard), f"{feature}.{kind}")),
  }
  if length is not None:
    spec["metadata"] = {
        "shape": [length],
        "data_type": dtype,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [obj]}},
        "codecs": [{"name": "sharding_indexed", "configuration": {
            "chunk_shape": [chunk],
            "codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                       {"name": "crc32c"}],
            "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                             {"name": "crc32c"}]}}],
    }
  return spec


def commit_key(index: int) -> str:
  """The key of shard `index`'s commit record, under the store's location."""
  return f"{COMMITS}{shard_name(index)}.json"


def rebuild_hint(task: str, split: str) -> str:
  return f"t5jax cache --task {task} --split {split} --rebuild"
