"""Builds a task's example store as an Apache Beam pipeline: one source unit per shard.

    plan     the source's units (`cache_units.plan`), written to plan.json first
    shards   Create(units) | Reshuffle | Map(build_shard): each worker runs SeqIO's
             preprocessors up to the cache point on its unit and streams the tokens into
             its shard (`store_writer`), then commits it
    manifest written by the driver once every shard is committed: the store exists

Beam's DirectRunner runs the shards on `workers` local processes; any other runner (Dataflow,
Flink, Spark) runs the same pipeline from its options. A build killed at any point resumes:
committed shards are kept (their records match the plan), a shard without its record is
deleted and written again, so the store ends the same as an uninterrupted build's. Workers
find the task by name: they import t5jax's tasks and the modules the user named.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import json
import os
import re
import sys
import tempfile
import threading
import time

from t5jax.data import cache_units
from t5jax.data import example_store
from t5jax.data import store_io
from t5jax.data import store_writer


@dataclasses.dataclass(frozen=True)
class Job:
  """What every worker needs to build shards of one store (plain data: Beam pickles it)."""
  task: str
  split: str
  location: str
  fingerprint: str
  modules: tuple = ()
  threads: int = 0
  cwd: str = ""


def _task(job: Job):
  """The job's task, found by name after importing the modules that register it."""
  import seqio  # pylint: disable=g-import-not-at-top
  from t5jax.data import tasks  # noqa: F401 pylint: disable=g-import-not-at-top,unused-import
  if job.cwd and job.cwd not in sys.path:
    sys.path.insert(0, job.cwd)  # A user's module beside the command, as on the driver.
  for module in job.modules:
    importlib.import_module(module)
  return seqio.get_mixture_or_task(job.task)


def build_shard(job: Job, index: int, unit: dict, task=None) -> dict:
  """Writes and commits shard `index` from `unit` unless it is committed; returns its record.

  Args:
    task: the `seqio.Task` when the caller has it (else found by name, as a worker does).
  """
  from t5jax.data import task_cache  # pylint: disable=g-import-not-at-top
  directory = store_io.Directory(job.location)
  record = directory.read_json(example_store.commit_key(index))
  if record is not None and record.get("unit") == unit and \
      record.get("fingerprint") == job.fingerprint:
    return record
  directory.delete_prefix(example_store.shard_name(index) + "/")  # A half-written try.
  task = task or _task(job)
  pre, _ = task_cache.split_preprocessors(task)
  names, batches = cache_units.examples(task, job.split, unit, pre, job.threads)
  dtype = example_store.token_dtype(max(
      task.output_features[k].vocabulary.vocab_size for k in names))
  writer = store_writer.ShardWriter(job.location, index, names, dtype)
  for flat, lengths in batches:
    for k in names:
      writer.add(k, flat[k], lengths[k])
  return writer.commit({"unit": unit, "fingerprint": job.fingerprint, "dtype": dtype,
                        "features": names})


class _Progress:
  """Prints shards done, tokens/s and an ETA every `seconds`, from the commit records."""

  def __init__(self, job: Job, total: int, done_before: int, seconds: float):
    self.job, self.total, self.before, self.seconds = job, total, done_before, seconds
    self.start = time.time()
    self.seen: dict[str, int] = {}
    self.stop = threading.Event()
    self.thread = threading.Thread(target=self._run, daemon=True)

  def _run(self) -> None:
    directory = store_io.Directory(self.job.location)
    stopped = False
    while not stopped:
      stopped = self.stop.wait(self.seconds)  # Then one last line.
      try:
        for key in directory.list(example_store.COMMITS):
          if key not in self.seen:
            record = directory.read_json(key) or {}
            self.seen[key] = sum(record.get("num_tokens", {}).values())
      except store_io.StoreError:
        continue
      done = len(self.seen)
      new = done - self.before
      tokens = sum(self.seen.values())
      elapsed = time.time() - self.start
      rate = tokens / elapsed if elapsed else 0.0
      eta = (f"{(self.total - done) * elapsed / new:.0f} s" if new > 0 else "unknown")
      print(f"cache {self.job.task}/{self.job.split}: {done}/{self.total} shards, "
            f"{tokens / 1e6:.1f} M tokens, {rate / 1e6:.2f} M tokens/s, ETA {eta}",
            file=sys.stderr, flush=True)


@contextlib.contextmanager
def _beam_log():
  """Sends this process's stderr (and its Beam workers', which inherit it) to a log file:
  Beam's harnesses log every bundle. Yields the file's path."""
  log = tempfile.NamedTemporaryFile(prefix="t5jax-beam-", suffix=".log", delete=False)
  saved = os.dup(2)
  real = sys.stderr
  real.flush()
  os.dup2(log.fileno(), 2)
  try:
    terminal = real.fileno() == 2
  except (AttributeError, OSError, ValueError):  # Already captured (a test): leave it.
    terminal = False
  if terminal:  # Our own lines (progress) still reach the terminal.
    sys.stderr = os.fdopen(os.dup(saved), "w", buffering=1)
  try:
    yield log.name
  finally:
    if terminal:
      sys.stderr.close()
      sys.stderr = real
    real.flush()
    os.dup2(saved, 2)
    os.close(saved)
    log.close()


def _worker_error(error: BaseException, log: str) -> Exception:
  """The one line a worker raised (a StoreError, SourceError, ...), else where to look."""
  text = str(error)
  found = re.findall(r"(?:StoreError|SourceError|FileNotFoundError|ValueError): ([^\n]+)", text)
  if found:
    return store_io.StoreError(found[-1].strip())
  return store_io.StoreError(f"the Beam pipeline failed ({' '.join(text.split())[:200]}); "
                             f"its log: {log}")


def _run_beam(job: Job, pending: list[tuple[int, dict]], workers: int, runner: str | None,
              options: list[str]) -> None:
  import logging  # pylint: disable=g-import-not-at-top
  with _beam_log():  # Its import warns about optional Google Cloud clients.
    import apache_beam as beam  # pylint: disable=g-import-not-at-top
    from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top
  args = list(options)
  if runner:
    args.append(f"--runner={runner}")
  else:
    args += ["--runner=DirectRunner", f"--direct_num_workers={workers}",
             "--direct_running_mode=multi_processing"]
  opts = pipeline_options.PipelineOptions(args)
  with _beam_log() as log:
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    try:
      with beam.Pipeline(options=opts) as p:
        _ = (p
             | "units" >> beam.Create([(i, json.dumps(u)) for i, u in pending])
             | "spread" >> beam.Reshuffle()
             | "shards" >> beam.MapTuple(lambda i, u: build_shard(job, i, json.loads(u))))
    except Exception as e:  # noqa: BLE001 - a worker's failure, as one line
      error = _worker_error(e, log)
    else:
      error = None
  if error is not None:
    raise error


def build(job: Job, units: list[dict], workers: int = 2, runner: str | None = None,
          options: tuple = (), progress_seconds: float = 10.0, task=None) -> dict:
  """Builds (or resumes building) the store of `job`; returns its manifest.

  Args:
    units: the source's units (`cache_units.plan`).
    workers: local worker processes of Beam's DirectRunner; 0 builds in this process.
    runner: another Beam runner (e.g. "DataflowRunner"), with its `options` (["--project=..",
      ...]); the workers must have t5jax and the user's modules installed.
    task: the `seqio.Task`, for a build in this process (workers=0).
  """
  directory = store_io.Directory(job.location)
  manifest = directory.read_json(example_store.MANIFEST)
  if manifest is not None and manifest.get("fingerprint") == job.fingerprint:
    return manifest
  start = time.time()
  plan = {"format": example_store.FORMAT, "task": job.task, "split": job.split,
          "fingerprint": job.fingerprint, "units": units}
  if directory.read_json(example_store.PLAN) != plan:
    # Another plan's shards (another source, or an older t5jax) would not fit this one.
    directory.delete_prefix("")
    directory.write_json(example_store.PLAN, plan)
  done = set(directory.list(example_store.COMMITS))
  pending = [(i, u) for i, u in enumerate(units) if example_store.commit_key(i) not in done]
  progress = _Progress(job, len(units), len(units) - len(pending), progress_seconds)
  progress.thread.start()
  try:
    if workers == 0 and not runner:
      for i, u in pending:
        build_shard(job, i, u, task)
    elif pending:
      _run_beam(job, pending, workers, runner, list(options))
  finally:
    progress.stop.set()
    progress.thread.join()
  records = []
  for i in range(len(units)):
    record = directory.read_json(example_store.commit_key(i))
    if record is None:
      raise store_io.StoreError(
          f"shard {i} of {job.location} was not committed by the pipeline; run the same "
          "`t5jax cache` again to resume")
    records.append(record)
  features = records[0]["features"]
  manifest = {
      "format": example_store.FORMAT, "task": job.task, "split": job.split,
      "fingerprint": job.fingerprint, "features": features, "dtype": records[0]["dtype"],
      "shards": [{k: r[k] for k in ("shard", "num_examples", "num_tokens", "sha256", "bytes")}
                 for r in records],
      "num_examples": sum(r["num_examples"] for r in records),
      "num_tokens": {f: sum(r["num_tokens"][f] for r in records) for f in features},
      "bytes": sum(r["bytes"] for r in records)}
  directory.write_json(example_store.MANIFEST, manifest)
  seconds = time.time() - start
  tokens = sum(manifest["num_tokens"].values())
  print(f"cache {job.task}/{job.split}: {manifest['num_examples']} examples, {tokens} tokens, "
        f"{manifest['bytes']} bytes, {len(records)} shards in {seconds:.1f} s "
        f"({tokens / max(seconds, 1e-9) / 1e6:.2f} M tokens/s) at {job.location}",
        file=sys.stderr, flush=True)
  return manifest


def verify(location: str) -> int:
  """Re-reads every shard and checks its tokens against the recorded sha256; returns shards.

  Raises:
    store_io.StoreError: (one line) naming the first shard that is missing or differs.
  """
  store = example_store.ExampleStore.open(location)
  hint = example_store.rebuild_hint(store.manifest["task"], store.manifest["split"])
  for s, record in enumerate(store.manifest["shards"]):
    for f in store.features:
      n = record["num_tokens"][f]
      digest = hashlib.sha256()
      first = store.first_token(f, s)
      for a in range(0, n, example_store.TOKENS_OBJECT):
        b = min(n, a + example_store.TOKENS_OBJECT)
        piece = store.stream(f, [first + a], [first + b])[0]
        digest.update(piece.astype(store.manifest["dtype"]).tobytes())
      if digest.hexdigest() != record["sha256"][f]:
        raise store_io.StoreError(
            f"shard {example_store.shard_name(s)} of {location}: {f} tokens do not match their "
            f"recorded sha256; run `{hint}`")
  return len(store.manifest["shards"])


def delete(location: str) -> None:
  store_io.Directory(location).delete_prefix("")
  if not store_io.is_gcs(location):
    try:
      os.removedirs(store_io.normalize(location))
    except OSError:
      pass
