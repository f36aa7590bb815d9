"""A task's source cut into units of parallel work (one shard of its store each), and each
unit's examples as batches.

A unit is plain JSON, so that a Beam worker anywhere can run it from the task's name:

* `{"kind": "tfds", "split": "train[a:b]"}`: one file of a TFDS split (examples a..b-1,
  TFDS reads just that file);
* `{"kind": "lines", "file": F, "start": a, "stop": b, "skip": k}`: the lines of a text file
  that start in bytes [a, b), cut every `range_bytes()` so that one large file is many units;
* `{"kind": "file", "file": F, "bytes": n}`: one file of another `seqio.FileDataSource`;
* `{"kind": "all"}`: the whole split (a source with no files, e.g. a function).

Units in plan order, read one after another, give the split's examples in file order,
whatever the number of workers: the store does not depend on how it was built.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import itertools
import os
import sys
from typing import Iterator

import numpy as np
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds

from t5jax.data import task_steps

# A unit of a large text file; about 16 M T5 tokens of English, a minute of one core.
RANGE_BYTES = 64 << 20
RANGE_BYTES_ENV = "T5JAX_CACHE_RANGE_BYTES"


def range_bytes() -> int:
  """Bytes of a text file per unit (`$T5JAX_CACHE_RANGE_BYTES`, else `RANGE_BYTES`)."""
  return int(os.environ.get(RANGE_BYTES_ENV, RANGE_BYTES))
# Examples per batch handed from tf.data to numpy (per-example Python cost dominates otherwise).
BATCH = 1024
_LINES_PER_READ = 1024
_READ_BYTES = 4 << 20


class SourceError(ValueError):
  """The task's source cannot be read; the message is one line naming the fix."""


def _shipped(source) -> bool:
  from t5jax.data import sources  # pylint: disable=g-import-not-at-top
  return isinstance(source, sources.ShippedTfdsSource)


def plan(task: seqio.Task, split: str) -> list[dict]:
  """The units of (task, split), in file order."""
  source = task.source
  if split not in source.splits:
    raise SourceError(f"task {task.name!r} has no split {split!r}; it has {list(source.splits)}")
  if _shipped(source):
    return [{"kind": "all"}]
  if isinstance(source, seqio.TfdsDataSource):
    return _tfds_units(task, source, split)
  if isinstance(source, seqio.FileDataSource):
    sizes = _file_sizes(task, source, split)
    if isinstance(source, seqio.TextLineDataSource):
      units = []
      step = range_bytes()
      for f, size in sizes.items():
        for start in range(0, max(size, 1), step):
          units.append({"kind": "lines", "file": f, "start": start,
                        "stop": min(size, start + step),
                        "skip": source._skip_header_lines if start == 0 else 0})  # pylint: disable=protected-access
      return units
    return [{"kind": "file", "file": f, "bytes": size} for f, size in sizes.items()]
  return [{"kind": "all"}]


def _file_sizes(task: seqio.Task, source: seqio.FileDataSource, split: str) -> dict[str, int]:
  """{file: bytes} of the split's files, in order (one stat each)."""
  try:
    files = list(source.list_shards(split))
  except Exception as e:  # noqa: BLE001 - a bad pattern or an unreachable bucket
    raise SourceError(f"cannot list the files of task {task.name!r} split {split!r}: "
                      f"{' '.join(str(e).split())[:200]}") from None
  if not files:
    raise SourceError(f"task {task.name!r} split {split!r}: no file matches "
                      f"{source._split_to_filepattern[split]!r}; check the path")  # pylint: disable=protected-access
  sizes = {}
  for f in files:  # A plain path is listed whether it exists or not.
    try:
      sizes[f] = tf.io.gfile.stat(f).length
    except tf.errors.NotFoundError:
      raise SourceError(f"task {task.name!r} split {split!r}: corpus file {f} not found") \
          from None
  return sizes


def _tfds_units(task: seqio.Task, source: seqio.TfdsDataSource, split: str) -> list[dict]:
  loader = source.tfds_dataset
  dataset_split = loader._map_split(split)  # pylint: disable=protected-access
  try:
    builder = loader.builder
    info = builder.info.splits[dataset_split]
    lengths = list(info.shard_lengths)
  except Exception:  # noqa: BLE001 - TFDS raises many kinds for a dataset not there
    lengths = []
  if not lengths:
    data_dir = getattr(loader, "data_dir", None) or "the TFDS data dir (~/tensorflow_datasets)"
    raise SourceError(
        f"task {task.name!r}: TFDS dataset {loader.name} split {dataset_split!r} is not prepared "
        f"in {data_dir}; prepare it there (`tfds build {str(loader.name).split(':')[0]} "
        "--data_dir DIR`, or copy a prepared one) and point the task at that dir (for "
        "c4_span_corruption: T5JAX_C4_DATA_DIR=DIR, local or gs://)")
  bounds = np.concatenate([[0], np.cumsum(lengths)])
  return [{"kind": "tfds", "split": f"{dataset_split}[{int(a)}:{int(b)}]"}
          for a, b in zip(bounds[:-1], bounds[1:])]


def _lines(unit: dict) -> Iterator[np.ndarray]:
  """The unit's lines (without their line ends), in batches: the lines that start in its
  byte range, read a block at a time (a `readline` per line costs as much as tokenizing)."""
  start, stop = unit["start"], unit["stop"]
  with tf.io.gfile.GFile(unit["file"], "rb") as f:
    if start > 0:
      f.seek(start - 1)
      f.readline()  # The line that starts before `start` belongs to the previous unit.
    for _ in range(unit["skip"]):
      f.readline()
    at = f.tell()  # Where the next line starts.
    rest, batch = b"", []
    while at < stop:
      block = f.read(_READ_BYTES)
      if not block:  # The file's last line, without a line end.
        if rest:
          batch.append(rest.removesuffix(b"\r"))
        break
      lines = (rest + block).split(b"\n")
      rest = lines.pop()
      for line in lines:
        if at >= stop:
          break
        batch.append(line.removesuffix(b"\r"))
        at += len(line) + 1
        if len(batch) == _LINES_PER_READ:
          yield np.array(batch, dtype=object)
          batch = []
    if batch:
      yield np.array(batch, dtype=object)


def raw_dataset(task: seqio.Task, split: str, unit: dict) -> tf.data.Dataset:
  """The unit's examples as the source gives them (before any preprocessor)."""
  source = task.source
  kind = unit["kind"]
  if kind == "all":
    return source.get_dataset(split=split, shuffle=False)
  if kind == "tfds":
    loader = source.tfds_dataset
    return loader.builder.as_dataset(
        split=unit["split"], shuffle_files=False, decoders=loader._decoders,  # pylint: disable=protected-access
        read_config=tfds.ReadConfig(skip_prefetch=True))
  if kind == "lines":
    return tf.data.Dataset.from_generator(
        lambda: _lines(unit), output_signature=tf.TensorSpec([None], tf.string)).unbatch()
  if kind == "file":
    return source._reader(unit["file"])  # pylint: disable=protected-access
  raise ValueError(f"unknown unit kind {kind!r}")


def examples(task: seqio.Task, split: str, unit: dict, pre: list, threads: int = 0,
             python_tokenize: bool = True) -> tuple[list[str], Iterator[tuple[dict, dict]]]:
  """(feature names, batches of the unit's examples after `pre`): each batch is
  ({feature: the examples' tokens concatenated}, {feature: their lengths}).

  When `pre` ends with SeqIO's `tokenize` into SentencePiece vocabularies (T5's tasks and
  users' text tasks do), the steps before it run in tf.data and the tokenizing runs here,
  a batch of texts per SentencePiece call: the same ids as tf_text's op (the same model),
  at close to SentencePiece's own rate, in one thread (N workers use N cores).

  Args:
    threads: tf.data's threads for this unit (0: its default, every core), so that N worker
      processes on one machine share its cores instead of each using all of them.
    python_tokenize: False runs `tokenize` in tf.data too (the reference in tests).
  """
  ds = raw_dataset(task, split, unit)
  tokenize = _trailing_tokenize(pre) if python_tokenize else None
  if tokenize is not None:
    # SeqIO's own step runner (it passes each preprocessor the arguments it asks for),
    # which applies the steps one after another: the last one may follow separately.
    ds = task._preprocess_dataset(ds, pre[:-1])  # pylint: disable=protected-access
    names = feature_names(task, ds)
    features = {k: task.output_features[k] for k in names}
    if all(_encodable(ds.element_spec[k], f) for k, f in features.items()):
      ds = _with_threads(ds.map(lambda ex: {k: ex[k] for k in names}).batch(BATCH), threads)
      return names, _encoded(ds, features, tokenize.get("with_eos", False), threads)
    pre = pre[-1:]  # Not SentencePiece's to do: tf.data tokenizes what it has.
  ds = task._preprocess_dataset(ds, pre)  # pylint: disable=protected-access
  names = feature_names(task, ds)
  ds = ds.map(lambda ex: {**{k: ex[k] for k in names},
                          **{f"{k}/length": tf.size(ex[k]) for k in names}})
  return names, _batches(_with_threads(ds.padded_batch(BATCH), threads), names)


def _trailing_tokenize(pre: list) -> dict | None:
  """The keyword arguments of `pre`'s last step if it is `seqio.preprocessors.tokenize`."""
  if not pre:
    return None
  step, keywords = pre[-1], {}
  while isinstance(step, functools.partial):
    step, keywords = step.func, {**step.keywords, **keywords}
  if step is not seqio.preprocessors.tokenize or set(keywords) - {"copy_pretokenized",
                                                                     "with_eos"}:
    return None
  return keywords  # copy_pretokenized's copies are not output features: not stored.


def _encodable(spec, feature: seqio.Feature) -> bool:
  """Whether a feature is one text that SentencePiece tokenizes (else tf.data does it all)."""
  return (isinstance(spec, tf.TensorSpec) and spec.dtype == tf.string and spec.shape.rank == 0
          and isinstance(feature.vocabulary, seqio.SentencePieceVocabulary))


def _with_threads(ds: tf.data.Dataset, threads: int) -> tf.data.Dataset:
  if not threads:
    return ds
  options = tf.data.Options()
  options.threading.private_threadpool_size = threads
  options.threading.max_intra_op_parallelism = 1
  return ds.with_options(options)


def _encoded(ds: tf.data.Dataset, features: dict, with_eos: bool,
             threads: int) -> Iterator[tuple[dict, dict]]:
  """Batches of texts from tf.data, tokenized by SentencePiece (bytes in: invalid UTF-8 is
  read as tf_text reads it)."""
  processors = {k: f.vocabulary.tokenizer for k, f in features.items()}
  for batch in ds.as_numpy_iterator():
    flat, lengths = {}, {}
    for k, feature in features.items():
      ids = processors[k].encode(list(batch[k]), num_threads=threads or -1)
      if with_eos and feature.add_eos:
        eos = feature.vocabulary.eos_id
        ids = [x + [eos] for x in ids]
      lengths[k] = np.fromiter(map(len, ids), np.int64, len(ids))
      flat[k] = np.fromiter(itertools.chain.from_iterable(ids), np.int32,
                            int(lengths[k].sum()))
    yield flat, lengths


def _batches(ds: tf.data.Dataset, names: list[str]) -> Iterator[tuple[dict, dict]]:
  for batch in ds.as_numpy_iterator():
    flat, lengths = {}, {}
    for k in names:
      lens = batch[f"{k}/length"].astype(np.int64)
      padded = batch[k]
      # Row-major selection of each row's first `len` tokens: the examples, concatenated.
      flat[k] = padded[np.arange(padded.shape[1])[None, :] < lens[:, None]]
      lengths[k] = lens
    yield flat, lengths


def feature_names(task: seqio.Task, ds: tf.data.Dataset) -> list[str]:
  """The task's output features present before its cache point, in the task's order."""
  names = [k for k in task.output_features if k in ds.element_spec]
  if not names:
    raise SourceError(
        f"task {task.name!r} produces none of its output features {list(task.output_features)} "
        "before its CacheDatasetPlaceholder; tokenize before the placeholder")
  return names


@dataclasses.dataclass(frozen=True)
class UnitExamples:
  """A task's units' examples for its store's build (`t5jax.store.Job.examples`): unit ->
  (feature names, the largest vocabulary's size, `examples`' batches).

  Plain data, which Beam pickles: a worker finds the task by name after importing t5jax's
  tasks and the user's `modules` (from `cwd`); a build in this process is given the `task`.
  """
  task_name: str
  split: str
  modules: tuple = ()
  threads: int = 0
  cwd: str = ""
  task: seqio.Task | None = None

  def _find(self) -> seqio.Task:
    from t5jax.data import tasks  # noqa: F401 pylint: disable=g-import-not-at-top,unused-import
    if self.cwd and self.cwd not in sys.path:
      sys.path.insert(0, self.cwd)  # A user's module beside the command, as on the driver.
    for module in self.modules:
      importlib.import_module(module)
    return seqio.get_mixture_or_task(self.task_name)

  def __call__(self, unit: dict) -> tuple:
    task = self.task or self._find()
    pre, _ = task_steps.split_preprocessors(task)
    names, batches = examples(task, self.split, unit, pre, self.threads)
    return names, max(task.output_features[k].vocabulary.vocab_size for k in names), batches
