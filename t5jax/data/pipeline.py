"""The batch pipeline: per-process numpy batches for the trainer, resumable at any step in
constant time, with the same rows whatever the number of processes.

How a global batch of B rows is made (`t5jax.data.packing` has the details):
  * Each task's SeqIO preprocessing up to its cache point runs once into an on-disk example
    store (`task_store`); the random per-example steps (span corruption, EOS) run in numpy on
    the example being read (`example_ops`), keyed by its position in the task's stream.
  * Row r of every batch is its own stream: mixture draws keyed by (seed, r, draw), and
    position k = r + B * count of each task's endless stream, whose epoch k // n is a fresh
    keyed permutation of the task's n examples. The B rows read each epoch's examples exactly
    once between them.
  * A row's position is B small integers; the host's rows' positions after a batch come with
    it (`Batches.state()`), the trainer saves them in each checkpoint, and a restart passes
    them back (`state=`): the next batch is computed directly, whatever the step.
  * A process builds only its own rows; with `num_workers` > 0 worker processes each fill a
    group of them (`workers`).
"""

import dataclasses
import os
import queue
import threading
from typing import Iterator, Sequence, Union

import numpy as np
import seqio

from t5jax.data import packing
from t5jax.data import registry
from t5jax.data import task_recipe
from t5jax.data import tf_devices
from t5jax.data import workers

TASK_IDS = "decoder_task_ids"
ENCODER_TASK_IDS = "encoder_task_ids"
MODEL_FEATURES = packing.ENCODER_FEATURES[:3] + packing.DECODER_FEATURES[:5] + (
    TASK_IDS, ENCODER_TASK_IDS)
# Batches computed ahead of the trainer, in a background thread.
PREFETCH_BATCHES = 4
# Local rows per worker process when `num_workers` is automatic.
ROWS_PER_WORKER = 64
# Bumped when the same settings would give other batches (a checkpoint's data position
# then no longer applies).
PIPELINE_VERSION = 2


@dataclasses.dataclass(frozen=True)
class InputSpec:
  """What to feed the model.

  Attributes:
    mixture_or_task: a registered task or mixture name (`t5jax tasks` lists them).
    split: the split to read, e.g. "train" or "validation".
    inputs_length: encoder length in tokens (EOS included).
    targets_length: decoder length in tokens (EOS included).
    pack: pack several examples into each row (segment ids/positions tell them apart).
    shuffle: a fresh order of each task's examples every epoch (off: file order).
    seed: the one seed for shuffling, mixing and span corruption; same seed, same stream.
    num_workers: worker processes filling this host's rows (0: a thread of this process;
      -1: one per 64 local rows, at most half the host's cores less one). It changes the
      speed, never the batches.
    vocabulary: None: each task's own (a mixture's must agree). Else every task of the run
      is tokenized with this one instead: the path of a SentencePiece model (local or
      gs://; T5's 100 extra ids added), "byte" (ByT5's), "t5", or "init_from": the
      vocabulary of the checkpoint CheckpointConfig.init_from names (fine-tuning mT5 or
      ByT5 on the shipped tasks).
  """
  mixture_or_task: str
  split: str = "train"
  inputs_length: int = 64
  targets_length: int = 64
  pack: bool = True
  shuffle: bool = True
  seed: int = 0
  num_workers: int = -1
  vocabulary: str | None = None

  def __post_init__(self):
    for field in ("inputs_length", "targets_length"):
      if getattr(self, field) < 1:
        raise ValueError(f"InputSpec.{field}={getattr(self, field)} must be a positive length")
    if self.seed < 0:
      raise ValueError(f"InputSpec.seed={self.seed} must be >= 0")
    if self.num_workers < -1:
      raise ValueError(f"InputSpec.num_workers={self.num_workers} must be >= 0, or -1 (auto)")


def _tasks(provider: Union[seqio.Task, seqio.Mixture]) -> list[seqio.Task]:
  if isinstance(provider, seqio.Mixture):
    return sorted(provider.tasks, key=lambda t: t.name)
  return [provider]


def task_names(mixture_or_task: str) -> list[str]:
  """The tasks of a mixture (or the task itself), sorted; task id i is element i."""
  return [t.name for t in _tasks(registry.get_task_or_mixture(mixture_or_task))]


def _validate(spec: InputSpec, tasks: Sequence[seqio.Task], global_batch_size: int,
              process_index: int, process_count: int) -> None:
  if global_batch_size < 1:
    raise ValueError(f"global_batch_size={global_batch_size} must be >= 1")
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(
        f"process_index={process_index} must be in [0, process_count={process_count})")
  if global_batch_size % process_count:
    raise ValueError(
        f"global_batch_size={global_batch_size} is not divisible by process_count="
        f"{process_count}; use a multiple of {process_count}")
  for task in tasks:
    if spec.split not in task.splits:
      raise ValueError(
          f"task {task.name!r} has no split {spec.split!r}; use one of {list(task.splits)}")


def _rates(provider) -> list[float]:
  if isinstance(provider, seqio.Mixture):
    return [float(provider.get_rate(t)) for t in _tasks(provider)]
  return [1.0]


def signature(spec: InputSpec, global_batch_size: int) -> dict:
  """What determines the batches (not the process count, not the workers): a checkpoint
  keeps it beside the data position, and a resume with another signature is refused."""
  provider = registry.get_task_or_mixture(spec.mixture_or_task)
  tasks = _tasks(provider)
  return {
      "pipeline": PIPELINE_VERSION, "mixture_or_task": spec.mixture_or_task,
      "tasks": [t.name for t in tasks], "rates": [round(r, 12) for r in _rates(provider)],
      "split": spec.split, "inputs_length": spec.inputs_length,
      "targets_length": spec.targets_length, "pack": spec.pack, "shuffle": spec.shuffle,
      "seed": spec.seed, "batch_size": global_batch_size,
      "examples": [t.num_input_examples(spec.split) for t in tasks],
      **({"vocabulary": spec.vocabulary} if spec.vocabulary else {}),
  }


def state_shape(spec: InputSpec, global_batch_size: int) -> tuple[int, int]:
  """Shape of the global data position: [batch rows, 1 + number of tasks]."""
  return (global_batch_size, 1 + len(task_names(spec.mixture_or_task)))


def auto_workers(local_rows: int) -> int:
  """`InputSpec.num_workers=-1`: one worker per 64 local rows, up to half the host's cores
  less one (the train step's own threads want the rest); none on a 2-core host, where a
  thread of the trainer gives more (docs/performance/input-pipeline.md)."""
  return max(0, min(local_rows // ROWS_PER_WORKER, (os.cpu_count() or 1) // 2 - 1))


def _producer(spec: InputSpec, provider, global_batch_size: int, process_index: int,
              process_count: int, repeat: bool, state: np.ndarray | None,
              example_ids: bool) -> Iterator[tuple[dict, np.ndarray, np.ndarray]]:
  """(features, valid rows, positions after) for this process's rows, batch after batch;
  `make_batches` has validated the arguments."""
  tf_devices.hide_accelerators_from_tf()
  tasks = _tasks(provider)
  rates = _rates(provider)
  if sum(rates) <= 0:
    raise ValueError(f"mixture {spec.mixture_or_task!r} has no task with a positive rate")
  lengths = {"inputs": spec.inputs_length, "targets": spec.targets_length}
  recipes = [task_recipe.recipe(t, spec.split, lengths, process_index) for t in tasks]
  local = global_batch_size // process_count
  rows = np.arange(process_index * local, (process_index + 1) * local)
  if state is None:
    state = np.zeros((local, 1 + len(tasks)), np.int64)
  state = np.asarray(state, np.int64)
  if state.shape != (local, 1 + len(tasks)):
    raise ValueError(
        f"data position has shape {state.shape} but {local} local rows of {len(tasks)} tasks "
        f"need {(local, 1 + len(tasks))}; resume with the batch size and mixture it was saved "
        "with")
  num_workers = auto_workers(local) if spec.num_workers < 0 else spec.num_workers
  if num_workers:
    yield from workers.worker_batches(recipes, rates, rows, global_batch_size, spec.seed,
                                      spec.pack, spec.shuffle, repeat, state, example_ids,
                                      min(num_workers, local))
    return
  packer = packing.RowPacker(recipes, rates, rows, global_batch_size, spec.seed, spec.pack,
                             spec.shuffle, repeat, state, example_ids)
  while True:
    features, valid = packer.next_batch()
    yield features, valid, packer.state.copy()


def _background(iterator: Iterator, size: int) -> Iterator:
  """Runs `iterator` ahead in a daemon thread, `size` items deep; re-raises its errors."""
  q: queue.Queue = queue.Queue(maxsize=size)
  done = object()
  stop = threading.Event()

  def work():
    try:
      for item in iterator:
        while not stop.is_set():
          try:
            q.put(item, timeout=0.1)
            break
          except queue.Full:
            pass
        if stop.is_set():
          return
      q.put(done)
    except Exception as e:  # pylint: disable=broad-except
      q.put(e)

  thread = threading.Thread(target=work, daemon=True, name="t5jax-input")
  thread.start()
  try:
    while True:
      item = q.get()
      if item is done:
        return
      if isinstance(item, Exception):
        raise item
      yield item
  finally:
    stop.set()


class Batches:
  """An iterator of this process's batches that knows its data position.

  `state()` is the position after the last batch returned (int64 [local rows, 1 + tasks]):
  pass it as `make_batches(..., state=)` to continue exactly there.
  """

  def __init__(self, items: Iterator, state: np.ndarray):
    self._items = items
    self._state = state

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    features, self._state = next(self._items)
    return features

  def state(self) -> np.ndarray:
    return self._state


def make_batches(spec: InputSpec, global_batch_size: int, process_index: int = 0,
                 process_count: int = 1, repeat: bool = True,
                 state: np.ndarray | None = None, example_ids: bool = False) -> Batches:
  """Yields this process's rows of each global batch as int32 numpy arrays.

  Args:
    spec: what to read (task or mixture, split, lengths, packing, shuffling, seed, workers).
    global_batch_size: rows in the global batch, over all processes.
    process_index: this process's index; it gets rows
      [process_index * local, (process_index + 1) * local), local = global / process_count.
    process_count: number of processes sharing the global batch.
    repeat: loop over the data forever; if False, make one pass and pad the final batches
      with all-zero rows (loss weight 0).
    state: this process's rows' data position (`Batches.state()` of an earlier run, or the
      checkpoint's); None starts at the beginning.
    example_ids: add `decoder_example_ids`, each target token's stored example index
      (-1 on padding), to audit what was read.

  Returns:
    A `Batches` iterator of dicts with the features in `MODEL_FEATURES`, each
    [local, length] int32; `decoder_task_ids` holds each target token's index into
    `task_names(...)`, 0 on padding.

  Raises:
    ValueError: (one line) for an unknown name or split, a batch size that does not split,
      or a position of the wrong shape.
  """
  provider = registry.get_task_or_mixture(spec.mixture_or_task)
  tasks = _tasks(provider)
  _validate(spec, tasks, global_batch_size, process_index, process_count)
  local = global_batch_size // process_count
  num_tasks = len(tasks)
  start = np.zeros((local, 1 + num_tasks), np.int64) if state is None else state

  def items():
    for features, valid, after in _producer(spec, provider, global_batch_size, process_index,
                                            process_count, repeat, state, example_ids):
      if not repeat and not valid.any():
        return  # Every row is padding: the single pass is over.
      yield features, after

  return Batches(_background(items(), PREFETCH_BATCHES), start)
