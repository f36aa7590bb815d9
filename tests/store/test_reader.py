"""The store's reader: a built store holds SeqIO's examples in file order, reads the same
through TensorStore as in memory, from GCS as from local disk, and refuses damaged, missing,
old or unbuilt stores in one line."""

import json
import os

import numpy as np
import pytest

import gcs_server
from store_fixtures import build, corpus_task, gcs, reference  # noqa: F401 pylint: disable=unused-import
from t5jax.data import example_ops
from t5jax.data import source_units
from t5jax.data import task_recipe
from t5jax.data import task_store
from t5jax.store import beam_build
from t5jax.store import kvstore
from t5jax.store import reader


def test_sharded_store_holds_seqio_examples_in_file_order(corpus_task, tmp_path):
  units = source_units.plan(corpus_task, "train")
  assert len(units) > 4 and {u["kind"] for u in units} == {"lines"}  # Files cut into ranges.
  manifest = build(corpus_task, str(tmp_path / "store"))
  files = sorted({u["file"] for u in units})
  ref = reference(corpus_task, units=[{"kind": "file", "file": f} for f in files])["targets"]
  store = reader.ExampleStore.open(str(tmp_path / "store"))
  assert store.num_examples == len(ref) == 802 and len(manifest["shards"]) == len(units)
  got = store.examples("targets", np.arange(store.num_examples))
  assert all(np.array_equal(a, b) for a, b in zip(got, ref))
  assert store.manifest["dtype"] == "uint16"  # T5's 32,128 ids fit in two bytes.
  tokens = sum(len(r) for r in ref)
  assert manifest["bytes"] == 2 * tokens + 8 * (store.num_examples + len(units))
  flat = np.concatenate(ref)
  starts = np.array([0, 17, tokens - 40, 5000])
  for piece, a in zip(store.stream("targets", starts, starts + 300), starts):
    np.testing.assert_array_equal(piece, flat[a:a + 300])  # Across shard boundaries too.


def test_reads_through_tensorstore_equal_reads_in_memory(corpus_task, tmp_path, monkeypatch):
  build(corpus_task, str(tmp_path / "store"))
  ids = np.random.default_rng(0).integers(0, 802, 200)
  small = reader.ExampleStore.open(str(tmp_path / "store"))
  monkeypatch.setenv(reader.IN_MEMORY_BYTES_ENV, "0")
  big = reader.ExampleStore.open(str(tmp_path / "store"))
  assert small.in_memory and not big.in_memory
  for a, b in zip(small.examples("targets", ids), big.examples("targets", ids)):
    np.testing.assert_array_equal(a, b)


def test_damaged_or_missing_shard_is_one_line_naming_the_rebuild(corpus_task, tmp_path,
                                                                 monkeypatch):
  location = str(tmp_path / "store")
  build(corpus_task, location)
  assert beam_build.verify(location) > 4
  tokens = tmp_path / "store" / "shard-00001" / "targets.tokens" / "c" / "0"
  data = bytearray(tokens.read_bytes())
  data[10] ^= 0xFF
  tokens.write_bytes(bytes(data))
  with pytest.raises(kvstore.StoreError, match=r"shard-00001.*--rebuild") as e:
    beam_build.verify(location)
  assert "\n" not in str(e.value)
  monkeypatch.setenv(reader.IN_MEMORY_BYTES_ENV, "0")
  store = reader.ExampleStore.open(location)
  with pytest.raises(kvstore.StoreError, match="checksum|rebuild"):
    store.examples("targets", np.arange(store.num_examples))  # crc32c of the chunk fails.
  os.rename(tmp_path / "store" / "shard-00002", tmp_path / "gone")
  store = reader.ExampleStore.open(location)
  with pytest.raises(kvstore.StoreError, match=r"shard-00002.*t5jax cache --task store_corpus"):
    store.stream("targets", [0], [store.num_tokens("targets")])


def test_old_format_and_unbuilt_stores_are_refused_in_one_line(tmp_path):
  old = tmp_path / "old"
  old.mkdir()
  (old / "info.json").write_text(json.dumps({"features": ["targets"], "num_examples": 1}))
  with pytest.raises(kvstore.StoreError, match="old format.*t5jax cache"):
    reader.ExampleStore.open(str(old))
  with pytest.raises(kvstore.StoreError, match="no manifest.*t5jax cache"):
    reader.ExampleStore.open(str(tmp_path / "never"))
  with pytest.raises(kvstore.StoreError, match="mangled gs:// URL"):
    kvstore.normalize("gs:/bucket/data")  # What pathlib makes of gs://bucket/data.


def test_store_on_gcs_reads_as_the_local_store(corpus_task, tmp_path, gcs, monkeypatch):
  del gcs
  monkeypatch.setenv("T5JAX_DATA_DIR", f"gs://{gcs_server.BUCKET}/{tmp_path.name}")
  view_gcs = example_ops.TaskView(task_recipe.recipe(corpus_task, "train",
                                                     {"inputs": 64, "targets": 32}))
  assert view_gcs.recipe.store.startswith("gs://") and not view_gcs._store.in_memory  # pylint: disable=protected-access
  monkeypatch.setenv("T5JAX_DATA_DIR", str(tmp_path / "local"))
  task_store.forget()
  view_local = example_ops.TaskView(task_recipe.recipe(corpus_task, "train",
                                                       {"inputs": 64, "targets": 32}))
  assert view_local.num_examples == view_gcs.num_examples
  ids = np.arange(view_local.num_examples)
  keys = np.random.default_rng(0).integers(0, 2**31, len(ids))
  for (a_in, a_t), (b_in, b_t) in zip(view_gcs.examples(ids, keys),
                                      view_local.examples(ids, keys)):
    np.testing.assert_array_equal(a_in, b_in)
    np.testing.assert_array_equal(a_t, b_t)
