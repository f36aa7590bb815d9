"""The store's build: from any source given as units and a callable (no SeqIO needed), in
process or on Beam's workers, resumed after a kill to the same store."""

import os
import signal
import time

import numpy as np
import pytest

from store_fixtures import build, cli, corpus_task  # noqa: F401 pylint: disable=unused-import
from t5jax import store
from t5jax.data import fingerprint
from t5jax.store import beam_build
from t5jax.store import kvstore
from t5jax.store import reader
from t5jax.store import writer


def _counting(unit: dict):
  """A source of its own: unit {"first": a, "count": n} holds examples [a], [a, a+1], ..."""
  tokens = [np.arange(unit["first"], unit["first"] + k + 1) for k in range(unit["count"])]
  lengths = np.array([len(t) for t in tokens])
  return ["targets"], 70_000, iter([({"targets": np.concatenate(tokens)},
                                     {"targets": lengths})])


def test_a_store_is_built_from_plain_units_and_a_callable(tmp_path):
  units = [{"first": 3, "count": 4}, {"first": 100, "count": 2}]
  job = store.Job(task="counting", split="train", location=str(tmp_path / "store"),
                  fingerprint="f", examples=_counting)
  manifest = store.build(job, units, workers=0)
  assert manifest["dtype"] == "uint32"  # 70,000 ids do not fit in two bytes.
  examples = store.ExampleStore.open(str(tmp_path / "store"))
  assert [e.tolist() for e in examples.examples("targets", np.arange(6))] == [
      [3], [3, 4], [3, 4, 5], [3, 4, 5, 6], [100], [100, 101]]
  assert store.exists(str(tmp_path / "store")) and store.verify(str(tmp_path / "store")) == 2


def test_killed_build_resumes_to_the_same_store(corpus_task, tmp_path, monkeypatch):
  reference = build(corpus_task, str(tmp_path / "whole"))
  location = str(tmp_path / "resumed")
  real = beam_build.build_shard
  calls = []

  def dies_at_third(job, index, unit):
    calls.append(index)
    if len(calls) == 3:
      # A half-written shard: its arrays exist, its commit record does not.
      writer.ShardWriter(job.location, index, ["targets"], "uint16").add(
          "targets", np.arange(5), np.array([5]))
      raise KeyboardInterrupt
    return real(job, index, unit)

  monkeypatch.setattr(beam_build, "build_shard", dies_at_third)
  with pytest.raises(KeyboardInterrupt):
    build(corpus_task, location)
  with pytest.raises(kvstore.StoreError, match="no manifest"):
    reader.ExampleStore.open(location)  # A half-built store is never read.
  monkeypatch.setattr(beam_build, "build_shard", real)
  resumed = build(corpus_task, location)
  assert resumed["shards"] == reference["shards"]


def test_beam_build_killed_then_resumed_equals_the_in_process_build(corpus_task, tmp_path):
  (tmp_path / "my_corpus_mod.py").write_text(
      "from t5jax.data import user_tasks\n"
      "user_tasks.register_text_span_corruption_task('store_corpus', "
      f"{str(tmp_path / 'part*.txt')!r})\n")
  reference = build(corpus_task, str(tmp_path / "in_process"))
  env = {**os.environ, "T5JAX_DATA_DIR": str(tmp_path / "beam")}
  args = ["cache", "--task", "store_corpus", "--module", "my_corpus_mod", "--workers", "2",
          "--progress_seconds", "1"]
  # Where docs/data.md says: DATA_DIR/t5jax_examples/TASK/SPLIT-FINGERPRINT.
  location = os.path.join(tmp_path, "beam", "t5jax_examples", "store_corpus",
                          f"train-{fingerprint.fingerprint(corpus_task, 'train')}")
  commits = os.path.join(location, "commits")
  first = cli(args, env, cwd=tmp_path, start_new_session=True)
  deadline = time.time() + 240
  while not (os.path.isdir(commits) and os.listdir(commits)) and time.time() < deadline:
    time.sleep(0.2)
  os.killpg(first.pid, signal.SIGKILL)  # The driver and its Beam workers, at once.
  first.communicate()
  done = len(os.listdir(commits))
  assert 0 < done < len(reference["shards"]), "the kill came too late to test a resume"
  out, err = cli(args + ["--verify"], env, cwd=tmp_path).communicate(timeout=400)
  assert "verified" in out and f"{len(reference['shards'])}/{len(reference['shards'])} shards" \
      in err, err[-3000:]
  assert "M tokens/s" in err and "examples" in err
  resumed = reader.ExampleStore.open(location).manifest
  assert resumed["shards"] == reference["shards"]
