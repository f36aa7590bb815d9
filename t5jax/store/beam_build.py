"""Builds a store as an Apache Beam pipeline: one unit of the source per shard.

    plan     the source's units, written to plan.json first
    shards   Create(units) | Reshuffle | Map(build_shard): each worker reads its unit's
             examples (`Job.examples`) and streams their tokens into its shard (`writer`),
             then commits it
    manifest written by the driver once every shard is committed: the store exists

What a unit is and how its examples are read is the caller's (`t5jax.data.task_store` runs a
SeqIO task's preprocessors up to its cache point): the build sees plain JSON units and a
callable, so it knows nothing of tasks. Beam's DirectRunner runs the shards on `workers`
local processes; any other runner (Dataflow, Flink, Spark) runs the same pipeline from its
options. A build killed at any point resumes: committed shards are kept (their records match
the plan), a shard without its record is deleted and written again, so the store ends the
same as an uninterrupted build's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import sys
import tempfile
import threading
import time
from typing import Callable, Iterator

from t5jax.store import kvstore
from t5jax.store import layout
from t5jax.store import reader
from t5jax.store import writer

# A unit's examples: (feature names, the largest vocabulary's size, batches of
# ({feature: the examples' tokens concatenated}, {feature: their lengths})).
Examples = tuple[list[str], int, Iterator[tuple[dict, dict]]]


@dataclasses.dataclass(frozen=True)
class Job:
  """What every worker needs to build shards of one store (Beam pickles it).

  Attributes:
    task: the task whose examples the store holds, and `split` its split (in the plan, the
      manifest and messages).
    location: the store's directory, local or `gs://`.
    fingerprint: what the examples are made from; a store of another fingerprint is rebuilt.
    examples: a unit (plain JSON) -> its `Examples`; picklable where Beam's workers run it.
  """
  task: str
  split: str
  location: str
  fingerprint: str
  examples: Callable[[dict], Examples]


def build_shard(job: Job, index: int, unit: dict) -> dict:
  """Writes and commits shard `index` from `unit` unless it is committed; returns its record."""
  directory = kvstore.Directory(job.location)
  record = directory.read_json(layout.commit_key(index))
  if record is not None and record.get("unit") == unit and \
      record.get("fingerprint") == job.fingerprint:
    return record
  directory.delete_prefix(layout.shard_name(index) + "/")  # A half-written try.
  names, vocab_size, batches = job.examples(unit)
  dtype = layout.token_dtype(vocab_size)
  shard = writer.ShardWriter(job.location, index, names, dtype)
  for flat, lengths in batches:
    for k in names:
      shard.add(k, flat[k], lengths[k])
  return shard.commit({"unit": unit, "fingerprint": job.fingerprint, "dtype": dtype,
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
    directory = kvstore.Directory(self.job.location)
    stopped = False
    while not stopped:
      stopped = self.stop.wait(self.seconds)  # Then one last line.
      try:
        for key in directory.list(layout.COMMITS):
          if key not in self.seen:
            record = directory.read_json(key) or {}
            self.seen[key] = sum(record.get("num_tokens", {}).values())
      except kvstore.StoreError:
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
    return kvstore.StoreError(found[-1].strip())
  return kvstore.StoreError(f"the Beam pipeline failed ({' '.join(text.split())[:200]}); "
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
          options: tuple = (), progress_seconds: float = 10.0) -> dict:
  """Builds (or resumes building) the store of `job`; returns its manifest.

  Args:
    units: the source's units (plain JSON), in order: shard i holds unit i's examples.
    workers: local worker processes of Beam's DirectRunner; 0 builds in this process.
    runner: another Beam runner (e.g. "DataflowRunner"), with its `options` (["--project=..",
      ...]); the workers must have t5jax and the user's modules installed.
  """
  directory = kvstore.Directory(job.location)
  manifest = directory.read_json(layout.MANIFEST)
  if manifest is not None and manifest.get("fingerprint") == job.fingerprint:
    return manifest
  start = time.time()
  plan = {"format": layout.FORMAT, "task": job.task, "split": job.split,
          "fingerprint": job.fingerprint, "units": units}
  if directory.read_json(layout.PLAN) != plan:
    # Another plan's shards (another source, or an older t5jax) would not fit this one.
    directory.delete_prefix("")
    directory.write_json(layout.PLAN, plan)
  done = set(directory.list(layout.COMMITS))
  pending = [(i, u) for i, u in enumerate(units) if layout.commit_key(i) not in done]
  progress = _Progress(job, len(units), len(units) - len(pending), progress_seconds)
  progress.thread.start()
  try:
    if workers == 0 and not runner:
      for i, u in pending:
        build_shard(job, i, u)
    elif pending:
      _run_beam(job, pending, workers, runner, list(options))
  finally:
    progress.stop.set()
    progress.thread.join()
  records = []
  for i in range(len(units)):
    record = directory.read_json(layout.commit_key(i))
    if record is None:
      raise kvstore.StoreError(
          f"shard {i} of {job.location} was not committed by the pipeline; run the same "
          "`t5jax cache` again to resume")
    records.append(record)
  features = records[0]["features"]
  manifest = {
      "format": layout.FORMAT, "task": job.task, "split": job.split,
      "fingerprint": job.fingerprint, "features": features, "dtype": records[0]["dtype"],
      "shards": [{k: r[k] for k in ("shard", "num_examples", "num_tokens", "sha256", "bytes")}
                 for r in records],
      "num_examples": sum(r["num_examples"] for r in records),
      "num_tokens": {f: sum(r["num_tokens"][f] for r in records) for f in features},
      "bytes": sum(r["bytes"] for r in records)}
  directory.write_json(layout.MANIFEST, manifest)
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
    kvstore.StoreError: (one line) naming the first shard that is missing or differs.
  """
  store = reader.ExampleStore.open(location)
  hint = layout.rebuild_hint(store.manifest["task"], store.manifest["split"])
  for s, record in enumerate(store.manifest["shards"]):
    for f in store.features:
      n = record["num_tokens"][f]
      digest = hashlib.sha256()
      first = store.first_token(f, s)
      for a in range(0, n, layout.TOKENS_OBJECT):
        b = min(n, a + layout.TOKENS_OBJECT)
        piece = store.stream(f, [first + a], [first + b])[0]
        digest.update(piece.astype(store.manifest["dtype"]).tobytes())
      if digest.hexdigest() != record["sha256"][f]:
        raise kvstore.StoreError(
            f"shard {layout.shard_name(s)} of {location}: {f} tokens do not match their "
            f"recorded sha256; run `{hint}`")
  return len(store.manifest["shards"])


def delete(location: str) -> None:
  kvstore.Directory(location).delete_prefix("")
  if not kvstore.is_gcs(location):
    try:
      os.removedirs(kvstore.normalize(location))
    except OSError:
      pass
