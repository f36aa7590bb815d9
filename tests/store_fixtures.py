"""Shared by the store's tests (tests/store/) and the task-store tests (tests/data/): a
span-corruption corpus task over two text files, SeqIO's own examples of a task, a store
built in process, and the localhost GCS server."""

import subprocess
import sys

import numpy as np
import pytest
import seqio

import gcs_server
from t5jax import store
from t5jax.data import fingerprint
from t5jax.data import source_units
from t5jax.data import task_steps
from t5jax.data import user_tasks

WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly hex "
         "jovial bankers near old stone bridges").split()


def write_corpus(path, docs: int, seed: int = 0) -> str:
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
  monkeypatch.setenv(source_units.RANGE_BYTES_ENV, str(20_000))
  monkeypatch.setenv("T5JAX_DATA_DIR", str(tmp_path / "data"))
  for i in range(2):
    write_corpus(tmp_path / f"part{i}.txt", 400, seed=i)
  task = user_tasks.register_text_span_corruption_task("store_corpus",
                                                       str(tmp_path / "part*.txt"))
  yield task
  seqio.TaskRegistry.remove("store_corpus")


@pytest.fixture(scope="module")
def gcs():
  return gcs_server.start()


def reference(task, split="train", units=None, python_tokenize=False):
  """The examples as SeqIO gives them: its reader on each whole file (TensorFlow's own
  line splitting), or on the whole split, through the task's preprocessors (tokenized by
  SeqIO's op, unless `python_tokenize`)."""
  pre, _ = task_steps.split_preprocessors(task)
  out = {}
  for unit in units or [{"kind": "all"}]:
    names, batches = source_units.examples(task, split, unit, pre,
                                           python_tokenize=python_tokenize)
    for flat, lengths in batches:
      for k in names:
        out.setdefault(k, []).extend(np.split(flat[k], np.cumsum(lengths[k])[:-1]))
  return out


def build(task, location, workers=0, split="train"):
  """Builds the store of (task, split) at `location` in this process; returns its manifest."""
  key = fingerprint.fingerprint(task, split)
  job = store.Job(task=task.name, split=split, location=location, fingerprint=key,
                  examples=source_units.UnitExamples(task.name, split, task=task))
  return store.build(job, source_units.plan(task, split), workers=workers)


def cli(args, env, **kwargs):
  """`python -m t5jax ARGS` started in `cwd`, its output piped."""
  return subprocess.Popen([sys.executable, "-m", "t5jax", *args], env=env, cwd=kwargs.pop("cwd"),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)
