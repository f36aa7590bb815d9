"""The example store: built in shards (in process or on Beam), read locally or from a real GCS
API server on localhost, resumed after a kill, and refusing bad stores in one line."""

import functools
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import seqio
import tensorflow as tf

import gcs_server
from t5jax.data import cache_build
from t5jax.data import cache_units
from t5jax.data import example_ops
from t5jax.data import example_store
from t5jax.data import store_io
from t5jax.data import task_cache
from t5jax.data import tasks
from t5jax.data import user_tasks

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly hex "
         "jovial bankers near old stone bridges").split()


def _corpus(path, docs: int, seed: int = 0) -> str:
  rng = np.random.default_rng(seed)
  with open(path, "w", encoding="utf-8") as f:
    for _ in range(docs):
      n = int(rng.integers(1, 120))
      f.write(" ".join(WORDS[i] for i in rng.integers(0, len(WORDS), n)) + "\n")
    f.write("\n")  # An empty document: SeqIO keeps it, so must the store.
  return str(path)


@pytest.fixture
def corpus_task(tmp_path, monkeypatch):
  """A span-corruption task over two text files, cut into units of ~20 KB."""
  monkeypatch.setenv(cache_units.RANGE_BYTES_ENV, str(20_000))
  monkeypatch.setenv("T5JAX_DATA_DIR", str(tmp_path / "data"))
  for i in range(2):
    _corpus(tmp_path / f"part{i}.txt", 400, seed=i)
  task = user_tasks.register_text_span_corruption_task("store_corpus",
                                                       str(tmp_path / "part*.txt"))
  yield task
  seqio.TaskRegistry.remove("store_corpus")


def _reference(task, split="train", units=None, python_tokenize=False):
  """The examples as SeqIO gives them: its reader on each whole file (TensorFlow's own
  line splitting), or on the whole split, through the task's preprocessors (tokenized by
  SeqIO's op, unless `python_tokenize`)."""
  pre, _ = task_cache.split_preprocessors(task)
  out = {}
  for unit in units or [{"kind": "all"}]:
    names, batches = cache_units.examples(task, split, unit, pre,
                                          python_tokenize=python_tokenize)
    for flat, lengths in batches:
      for k in names:
        out.setdefault(k, []).extend(np.split(flat[k], np.cumsum(lengths[k])[:-1]))
  return out


def _build(task, location, workers=0, split="train"):
  key = task_cache.fingerprint(task, split)
  job = cache_build.Job(task=task.name, split=split, location=location, fingerprint=key)
  return cache_build.build(job, cache_units.plan(task, split), workers=workers, task=task)


def test_sharded_store_holds_seqio_examples_in_file_order(corpus_task, tmp_path):
  units = cache_units.plan(corpus_task, "train")
  assert len(units) > 4 and {u["kind"] for u in units} == {"lines"}  # Files cut into ranges.
  manifest = _build(corpus_task, str(tmp_path / "store"))
  files = sorted({u["file"] for u in units})
  ref = _reference(corpus_task, units=[{"kind": "file", "file": f} for f in files])["targets"]
  store = example_store.ExampleStore.open(str(tmp_path / "store"))
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
  _build(corpus_task, str(tmp_path / "store"))
  ids = np.random.default_rng(0).integers(0, 802, 200)
  small = example_store.ExampleStore.open(str(tmp_path / "store"))
  monkeypatch.setenv(example_store.IN_MEMORY_BYTES_ENV, "0")
  big = example_store.ExampleStore.open(str(tmp_path / "store"))
  assert small.in_memory and not big.in_memory
  for a, b in zip(small.examples("targets", ids), big.examples("targets", ids)):
    np.testing.assert_array_equal(a, b)


def test_killed_build_resumes_to_the_same_store(corpus_task, tmp_path, monkeypatch):
  reference = _build(corpus_task, str(tmp_path / "whole"))
  location = str(tmp_path / "resumed")
  real = cache_build.build_shard
  calls = []

  def dies_at_third(job, index, unit, task=None):
    calls.append(index)
    if len(calls) == 3:
      # A half-written shard: its arrays exist, its commit record does not.
      cache_build.store_writer.ShardWriter(job.location, index, ["targets"], "uint16").add(
          "targets", np.arange(5), np.array([5]))
      raise KeyboardInterrupt
    return real(job, index, unit, task)

  monkeypatch.setattr(cache_build, "build_shard", dies_at_third)
  with pytest.raises(KeyboardInterrupt):
    _build(corpus_task, location)
  with pytest.raises(store_io.StoreError, match="no manifest"):
    example_store.ExampleStore.open(location)  # A half-built store is never read.
  monkeypatch.setattr(cache_build, "build_shard", real)
  resumed = _build(corpus_task, location)
  assert resumed["shards"] == reference["shards"]


def test_damaged_or_missing_shard_is_one_line_naming_the_rebuild(corpus_task, tmp_path,
                                                                 monkeypatch):
  location = str(tmp_path / "store")
  _build(corpus_task, location)
  assert cache_build.verify(location) > 4
  tokens = tmp_path / "store" / "shard-00001" / "targets.tokens" / "c" / "0"
  data = bytearray(tokens.read_bytes())
  data[10] ^= 0xFF
  tokens.write_bytes(bytes(data))
  with pytest.raises(store_io.StoreError, match=r"shard-00001.*--rebuild") as e:
    cache_build.verify(location)
  assert "\n" not in str(e.value)
  monkeypatch.setenv(example_store.IN_MEMORY_BYTES_ENV, "0")
  store = example_store.ExampleStore.open(location)
  with pytest.raises(store_io.StoreError, match="checksum|rebuild"):
    store.examples("targets", np.arange(store.num_examples))  # crc32c of the chunk fails.
  os.rename(tmp_path / "store" / "shard-00002", tmp_path / "gone")
  store = example_store.ExampleStore.open(location)
  with pytest.raises(store_io.StoreError, match=r"shard-00002.*t5jax cache --task store_corpus"):
    store.stream("targets", [0], [store.num_tokens("targets")])


def test_old_format_and_unbuilt_stores_are_refused_in_one_line(tmp_path):
  old = tmp_path / "old"
  old.mkdir()
  (old / "info.json").write_text(json.dumps({"features": ["targets"], "num_examples": 1}))
  with pytest.raises(store_io.StoreError, match="old format.*t5jax cache"):
    example_store.ExampleStore.open(str(old))
  with pytest.raises(store_io.StoreError, match="no manifest.*t5jax cache"):
    example_store.ExampleStore.open(str(tmp_path / "never"))
  with pytest.raises(store_io.StoreError, match="mangled gs:// URL"):
    store_io.normalize("gs:/bucket/data")  # What pathlib makes of gs://bucket/data.


def test_large_source_asks_for_t5jax_cache(corpus_task, monkeypatch):
  monkeypatch.setenv(task_cache.AUTO_BUILD_ENV, "1000")
  with pytest.raises(store_io.StoreError,
                     match=r"over the .* MB built on first use; build it first: "
                           r"t5jax cache --task store_corpus --split train"):
    task_cache.recipe(corpus_task, "train", {"inputs": 64, "targets": 32})


def test_missing_corpus_file_is_one_line(tmp_path):
  with pytest.raises(FileNotFoundError, match="matches no file"):
    user_tasks.register_text_span_corruption_task("store_missing", str(tmp_path / "no*.txt"))
  path = _corpus(tmp_path / "gone.txt", 10)
  task = user_tasks.register_text_span_corruption_task("store_missing", path)
  try:
    os.remove(path)
    with pytest.raises(ValueError, match=f"corpus file {path} not found"):
      task_cache.store_of(task, "train")
  finally:
    seqio.TaskRegistry.remove("store_missing")


def test_tfds_source_is_cut_at_its_files(t5jax_data_dir, tmp_path):
  from t5jax.data import prepare  # pylint: disable=g-import-not-at-top
  builder = prepare.prepared_builder("t5jax_multi30k")
  task = seqio.Task(
      "store_tfds", source=seqio.TfdsDataSource(
          f"t5jax_multi30k:{builder.VERSION}", tfds_data_dir=str(t5jax_data_dir), read_only=True),
      preprocessors=seqio.get_mixture_or_task("multi30k_en_fr").preprocessors,
      output_features=tasks.output_features())
  units = cache_units.plan(task, "validation")
  assert len(units) == len(builder.info.splits["validation"].shard_lengths)
  _build(task, str(tmp_path / "store"), split="validation")
  store = example_store.ExampleStore.open(str(tmp_path / "store"))
  ref = _reference(task, "validation")["inputs"]
  assert store.num_examples == len(ref) == 1014
  got = store.examples("inputs", np.arange(len(ref)))
  assert all(np.array_equal(a, b) for a, b in zip(got, ref))


def _split_examples(task, split, monkeypatch=None, python_tokenize=True):
  """The split's examples as lists; with `monkeypatch`, asserts SentencePiece was called."""
  calls = []
  if monkeypatch is not None:
    real = cache_units._encoded  # pylint: disable=protected-access
    monkeypatch.setattr(cache_units, "_encoded", lambda *a: calls.append(1) or real(*a))
  out = {k: [x.tolist() for x in v]
         for k, v in _reference(task, split, python_tokenize=python_tokenize).items()}
  assert monkeypatch is None or calls
  return out


@pytest.mark.parametrize("name,split", [("multi30k_en_fr", "validation"),
                                        ("text_span_corruption", "validation"),
                                        ("glue_rte", "validation")])
def test_tokenizing_in_python_gives_seqios_ids(t5jax_data_dir, name, split, monkeypatch):
  task = seqio.get_mixture_or_task(name)
  fast = _split_examples(task, split, monkeypatch)
  ref = _split_examples(task, split, python_tokenize=False)
  assert fast.keys() == ref.keys() and fast == ref
  assert sum(len(x) for v in fast.values() for x in v) > 10_000


def test_tokenizing_in_python_gives_seqios_ids_for_odd_texts(monkeypatch):
  texts = ["", "  lead and trail  ", "Ünïcödé ﬁ ① ｆｕｌｌ", "日本語", "tab\there x\r\ny",
           "emoji 😀👍🏽", "a" * 3000]
  raw = [t.encode() for t in texts] + [b"\xff\xfe bad utf8 \xc3"]
  task = seqio.Task(
      "store_odd_texts",
      source=seqio.FunctionDataSource(
          lambda split, shuffle_files: tf.data.Dataset.from_tensor_slices({"targets": raw}),
          splits=["train"]),
      preprocessors=[functools.partial(seqio.preprocessors.tokenize, with_eos=True)],
      output_features=tasks.output_features())
  fast = _split_examples(task, "train", monkeypatch)["targets"]
  ref = _split_examples(task, "train", python_tokenize=False)["targets"]
  assert fast == ref and len(fast) == len(raw) and all(x[-1] == 1 for x in fast)  # EOS.


def test_a_vocabulary_other_than_sentencepiece_is_tokenized_by_seqio(monkeypatch):
  monkeypatch.setattr(cache_units, "_encoded", lambda *a: pytest.fail("not SentencePiece's"))
  task = seqio.Task(
      "store_bytes_vocab",
      source=seqio.FunctionDataSource(
          lambda split, shuffle_files: tf.data.Dataset.from_tensor_slices(
              {"targets": ["héllo", "", "world"]}), splits=["train"]),
      preprocessors=[seqio.preprocessors.tokenize],
      output_features={"targets": seqio.Feature(seqio.ByteVocabulary())})
  assert _split_examples(task, "train")["targets"] == [
      [b + 3 for b in "héllo".encode()], [], [b + 3 for b in b"world"]]  # 3 special ids


def test_c4_task_is_t5s_and_says_how_to_prepare_c4(tmp_path, monkeypatch):
  task = seqio.get_mixture_or_task("c4_span_corruption")
  assert task.source.tfds_dataset.name == "c4/en:3.0.1"
  pre, post = task_cache.split_preprocessors(task)
  assert [getattr(s, "__name__", "") for s in pre][-1] == "tokenize"
  assert [task_cache._identify(s)[0] for s in post] == [  # pylint: disable=protected-access
      example_ops.SPAN_CORRUPTION, example_ops.EOS_AFTER_TRIM]
  monkeypatch.setenv(tasks.C4_DATA_DIR_ENV, str(tmp_path))
  tasks.register()
  with pytest.raises(ValueError, match=r"c4/en:3.0.1 .*not prepared in .*T5JAX_C4_DATA_DIR"):
    cache_units.plan(seqio.get_mixture_or_task("c4_span_corruption"), "train")
  monkeypatch.delenv(tasks.C4_DATA_DIR_ENV)
  tasks.register()


@pytest.fixture(scope="module")
def gcs():
  return gcs_server.start()


def test_store_on_gcs_reads_as_the_local_store(corpus_task, tmp_path, gcs, monkeypatch):
  del gcs
  monkeypatch.setenv("T5JAX_DATA_DIR", f"gs://{gcs_server.BUCKET}/{tmp_path.name}")
  view_gcs = example_ops.TaskView(task_cache.recipe(corpus_task, "train",
                                                    {"inputs": 64, "targets": 32}))
  assert view_gcs.recipe.store.startswith("gs://") and not view_gcs._store.in_memory  # pylint: disable=protected-access
  monkeypatch.setenv("T5JAX_DATA_DIR", str(tmp_path / "local"))
  task_cache._locations.clear()  # pylint: disable=protected-access
  view_local = example_ops.TaskView(task_cache.recipe(corpus_task, "train",
                                                      {"inputs": 64, "targets": 32}))
  assert view_local.num_examples == view_gcs.num_examples
  ids = np.arange(view_local.num_examples)
  keys = np.random.default_rng(0).integers(0, 2**31, len(ids))
  for (a_in, a_t), (b_in, b_t) in zip(view_gcs.examples(ids, keys),
                                      view_local.examples(ids, keys)):
    np.testing.assert_array_equal(a_in, b_in)
    np.testing.assert_array_equal(a_t, b_t)


def test_other_processes_wait_for_process_0_on_gcs(corpus_task, tmp_path, gcs, monkeypatch):
  del gcs
  monkeypatch.setenv("T5JAX_DATA_DIR", f"gs://{gcs_server.BUCKET}/wait-{tmp_path.name}")
  monkeypatch.setenv(task_cache.WAIT_ENV, "2")
  task_cache._locations.clear()  # pylint: disable=protected-access
  with pytest.raises(store_io.StoreError, match="process 0 did not build .*`t5jax cache --task store_corpus"):
    task_cache.store_of(corpus_task, "train", process_index=1)
  location = task_cache.store_of(corpus_task, "train", process_index=0)
  task_cache._locations.clear()  # pylint: disable=protected-access
  assert task_cache.store_of(corpus_task, "train", process_index=1) == location


def test_missing_bucket_is_one_line(corpus_task, gcs, monkeypatch):
  del gcs
  monkeypatch.setenv("T5JAX_DATA_DIR", "gs://no-such-bucket-t5jax/data")
  task_cache._locations.clear()  # pylint: disable=protected-access
  with pytest.raises(store_io.StoreError, match="no-such-bucket-t5jax.*bucket does not exist"):
    task_cache.store_of(corpus_task, "train")


def _cli(args, env, **kwargs):
  return subprocess.Popen([sys.executable, "-m", "t5jax", *args], env=env, cwd=kwargs.pop("cwd"),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_unreachable_gcs_server_is_one_line(tmp_path):
  env = {**os.environ, "STORAGE_EMULATOR_HOST": "http://127.0.0.1:9",
         "T5JAX_DATA_DIR": "gs://some-bucket/data", "T5JAX_GCS_RETRIES": "2"}
  env.pop("TENSORSTORE_GCS_HTTP_URL", None)
  _corpus(tmp_path / "c.txt", 20)
  (tmp_path / "my_c.py").write_text(
      "from t5jax.data import user_tasks\n"
      f"user_tasks.register_text_span_corruption_task('my_c', {str(tmp_path / 'c.txt')!r})\n")
  out, err = _cli(["cache", "--task", "my_c", "--module", "my_c", "--workers", "0"], env,
                  cwd=tmp_path).communicate(timeout=300)
  last = err.strip().splitlines()[-1]
  assert last.startswith("error: ") and "gs://some-bucket/data" in last, err[-2000:]
  assert "cannot be reached" in last and "STORAGE_EMULATOR_HOST" in last, last


def test_beam_build_killed_then_resumed_equals_the_in_process_build(corpus_task, tmp_path):
  (tmp_path / "my_corpus_mod.py").write_text(
      "from t5jax.data import user_tasks\n"
      "user_tasks.register_text_span_corruption_task('store_corpus', "
      f"{str(tmp_path / 'part*.txt')!r})\n")
  reference = _build(corpus_task, str(tmp_path / "in_process"))
  env = {**os.environ, "T5JAX_DATA_DIR": str(tmp_path / "beam")}
  args = ["cache", "--task", "store_corpus", "--module", "my_corpus_mod", "--workers", "2",
          "--progress_seconds", "1"]
  location = task_cache.store_location(corpus_task, "train").replace(
      str(tmp_path / "data"), str(tmp_path / "beam"))
  commits = os.path.join(location, "commits")
  first = _cli(args, env, cwd=tmp_path, start_new_session=True)
  deadline = time.time() + 240
  while not (os.path.isdir(commits) and os.listdir(commits)) and time.time() < deadline:
    time.sleep(0.2)
  os.killpg(first.pid, signal.SIGKILL)  # The driver and its Beam workers, at once.
  first.communicate()
  done = len(os.listdir(commits))
  assert 0 < done < len(reference["shards"]), "the kill came too late to test a resume"
  out, err = _cli(args + ["--verify"], env, cwd=tmp_path).communicate(timeout=400)
  assert "verified" in out and f"{len(reference['shards'])}/{len(reference['shards'])} shards" \
      in err, err[-3000:]
  assert "M tokens/s" in err and "examples" in err
  resumed = example_store.ExampleStore.open(location).manifest
  assert resumed["shards"] == reference["shards"]


def test_full_disk_during_a_build_is_one_line_and_keeps_committed_shards(corpus_task, tmp_path):
  disk = tmp_path / "small_disk"
  disk.mkdir()
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(disk)],
                           capture_output=True, check=False)
  if mounted.returncode:
    pytest.skip("mounting a 96 KB tmpfs needs root: " + mounted.stderr.decode().strip())
  try:
    location = str(disk / "store")
    with pytest.raises(store_io.StoreError, match=r"small_disk/store.*the disk is full") as e:
      _build(corpus_task, location)
    assert "\n" not in str(e.value)
    committed = os.listdir(os.path.join(location, "commits"))
    assert committed and not os.path.exists(os.path.join(location, "manifest.json"))
    records = [json.loads(open(os.path.join(location, "commits", c)).read()) for c in committed]
    assert all(r["num_examples"] > 0 for r in records)
  finally:
    subprocess.run(["umount", str(disk)], check=False)


@pytest.mark.parametrize("block", [7, 64, 4 << 20])
def test_text_units_hold_each_line_once_whatever_the_cuts(tmp_path, monkeypatch, block):
  monkeypatch.setattr(cache_units, "_READ_BYTES", block)
  rng = np.random.default_rng(block)
  lines = [" ".join(WORDS[i] for i in rng.integers(0, len(WORDS), rng.integers(0, 9)))
           for _ in range(300)]
  text = "header\n" + "".join(l + ("\r\n" if i % 7 == 0 else "\n")
                              for i, l in enumerate(lines))[:-1]  # No final line end.
  path = tmp_path / "doc.txt"
  path.write_bytes(text.encode())
  size = path.stat().st_size
  cuts = sorted({0, size, *rng.integers(0, size, 12).tolist(), text.index("\n") + 1})
  got = []
  for a, b in zip(cuts[:-1], cuts[1:]):
    unit = {"kind": "lines", "file": str(path), "start": a, "stop": b, "skip": int(a == 0)}
    got += [x.decode() for batch in cache_units._lines(unit) for x in batch]  # pylint: disable=protected-access
  assert got == lines
