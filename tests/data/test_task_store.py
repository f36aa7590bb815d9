"""A task's store: its preprocessors split at the cache point, built on first use up to a
size, else refused in one line naming `t5jax cache`; on GCS the other processes wait for
process 0."""

import os

import pytest
import seqio

import gcs_server
from store_fixtures import corpus_task, gcs, write_corpus  # noqa: F401 pylint: disable=unused-import
from t5jax import store
from t5jax.data import example_ops
from t5jax.data import source_units
from t5jax.data import task_recipe
from t5jax.data import task_steps
from t5jax.data import task_store
from t5jax.data import tasks
from t5jax.data import user_tasks


def test_large_source_asks_for_t5jax_cache(corpus_task, monkeypatch):
  monkeypatch.setenv(task_store.AUTO_BUILD_ENV, "1000")
  with pytest.raises(store.StoreError,
                     match=r"over the .* MB built on first use; build it first: "
                           r"t5jax cache --task store_corpus --split train"):
    task_recipe.recipe(corpus_task, "train", {"inputs": 64, "targets": 32})


def test_missing_corpus_file_is_one_line(tmp_path):
  with pytest.raises(FileNotFoundError, match="matches no file"):
    user_tasks.register_text_span_corruption_task("store_missing", str(tmp_path / "no*.txt"))
  path = write_corpus(tmp_path / "gone.txt", 10)
  task = user_tasks.register_text_span_corruption_task("store_missing", path)
  try:
    os.remove(path)
    with pytest.raises(ValueError, match=f"corpus file {path} not found"):
      task_store.ensure(task, "train")
  finally:
    seqio.TaskRegistry.remove("store_missing")


def test_c4_task_is_t5s_and_says_how_to_prepare_c4(tmp_path, monkeypatch):
  task = seqio.get_mixture_or_task("c4_span_corruption")
  assert task.source.tfds_dataset.name == "c4/en:3.0.1"
  pre, post = task_steps.split_preprocessors(task)
  assert [getattr(s, "__name__", "") for s in pre][-1] == "tokenize"
  assert [task_steps.identify(s)[0] for s in post] == [
      example_ops.SPAN_CORRUPTION, example_ops.EOS_AFTER_TRIM]
  monkeypatch.setenv(tasks.C4_DATA_DIR_ENV, str(tmp_path))
  tasks.register()
  with pytest.raises(ValueError, match=r"c4/en:3.0.1 .*not prepared in .*T5JAX_C4_DATA_DIR"):
    source_units.plan(seqio.get_mixture_or_task("c4_span_corruption"), "train")
  monkeypatch.delenv(tasks.C4_DATA_DIR_ENV)
  tasks.register()


def test_other_processes_wait_for_process_0_on_gcs(corpus_task, tmp_path, gcs, monkeypatch):
  del gcs
  monkeypatch.setenv("T5JAX_DATA_DIR", f"gs://{gcs_server.BUCKET}/wait-{tmp_path.name}")
  monkeypatch.setenv(task_store.WAIT_ENV, "2")
  task_store.forget()
  with pytest.raises(store.StoreError, match="process 0 did not build .*`t5jax cache --task store_corpus"):
    task_store.ensure(corpus_task, "train", process_index=1)
  location = task_store.ensure(corpus_task, "train", process_index=0).location
  task_store.forget()
  assert task_store.ensure(corpus_task, "train", process_index=1).location == location
