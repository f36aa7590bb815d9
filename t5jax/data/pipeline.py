"""The batch pipeline: deterministic, per-process, resumable numpy batches for the trainer.

How a global batch is made, the same way whatever the number of processes:
  * Row r of every global batch has its own stream ("virtual shard" r of `global_batch_size`):
    each task reads example shard r of the split (`seqio.ShardInfo(r, B)`), the tasks are
    sampled with the mixture's rates from a random stream keyed by (seed, r), and SeqIO's
    feature converter packs the examples into rows.
  * A process builds only its own rows' streams, so it reads only its shards, and row r holds
    the same tokens whether one process or many build it.
  * The per-row stream is built by one traced function of the row index (`interleave` over row
    indices, round-robin), so building costs the same for 8 rows or 512.
  * `start_step=n` skips n batches of that deterministic stream.
"""

import dataclasses
import queue
import threading
from typing import Iterator, Sequence, Union

import numpy as np
import seqio
import tensorflow as tf

from t5jax.data import registry
from t5jax.data import tf_devices
from t5jax.data.feature_converter import (ENCODER_TASK_IDS, TASK_IDS,
                                          TaskIdEncDecFeatureConverter)

MODEL_FEATURES = (
    "encoder_input_tokens", "encoder_segment_ids", "encoder_positions",
    "decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
    "decoder_segment_ids", "decoder_positions", TASK_IDS, ENCODER_TASK_IDS,
)
# Batches computed ahead of the trainer, in a background thread.
PREFETCH_BATCHES = 4
# SeqIO's shuffle after preprocessing; it only has to separate the consecutive (correlated)
# segments that span corruption cuts from one document.
EXAMPLE_SHUFFLE_BUFFER = 16
# Keeps the mixture-sampling seed apart from the per-task seeds (task ids are small).
_MIX_SALT = 1 << 20


@dataclasses.dataclass(frozen=True)
class InputSpec:
  """What to feed the model.

  Attributes:
    mixture_or_task: a registered task or mixture name (`t5jax tasks` lists them).
    split: the split to read, e.g. "train" or "validation".
    inputs_length: encoder length in tokens (EOS included).
    targets_length: decoder length in tokens (EOS included).
    pack: pack several examples into each row (segment ids/positions tell them apart).
    shuffle: shuffle the examples (off for ordered evaluation).
    seed: the one seed for shuffling, mixing and span corruption; same seed, same stream.
  """
  mixture_or_task: str
  split: str = "train"
  inputs_length: int = 64
  targets_length: int = 64
  pack: bool = True
  shuffle: bool = True
  seed: int = 0

  def __post_init__(self):
    for field in ("inputs_length", "targets_length"):
      if getattr(self, field) < 1:
        raise ValueError(f"InputSpec.{field}={getattr(self, field)} must be a positive length")
    if self.seed < 0:
      raise ValueError(f"InputSpec.seed={self.seed} must be >= 0")


def _tasks(provider: Union[seqio.Task, seqio.Mixture]) -> list[seqio.Task]:
  if isinstance(provider, seqio.Mixture):
    return sorted(provider.tasks, key=lambda t: t.name)
  return [provider]


def task_names(mixture_or_task: str) -> list[str]:
  """The tasks of a mixture (or the task itself), sorted; task id i is element i."""
  return [t.name for t in _tasks(registry.get_task_or_mixture(mixture_or_task))]


def _derive_seed(*parts: int) -> int:
  # A hash of the parts, stable across runs, processes and Python versions.
  return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint32)[0] >> 1)


def _task_stream(task: seqio.Task, task_id: int, spec: InputSpec, row: tf.Tensor,
                 num_rows: int, repeat: bool) -> tf.data.Dataset:
  """Row `row`'s examples of one task: inputs, targets and the per-token task id."""
  num_examples = task.num_input_examples(spec.split)
  # A split smaller than the batch gives each of its examples its own shard; the rows beyond
  # reuse those shards (repeat) or get none (a single pass).
  num_shards = int(min(num_rows, num_examples)) if num_examples else num_rows
  # The seed is the same for every row: rows differ by their shard. A Python int is needed
  # because SeqIO derives its preprocessors' seeds from it in Python.
  ds = task.get_dataset(
      sequence_length={"inputs": spec.inputs_length, "targets": spec.targets_length},
      split=spec.split,
      shuffle=spec.shuffle,
      seed=_derive_seed(spec.seed, task_id),
      shard_info=seqio.ShardInfo(row % num_shards, num_shards),
      num_epochs=None if repeat else 1,
      use_cached=False,
      # The source shuffles whole shards each epoch; SeqIO's in-memory cache would freeze the
      # first epoch's order, and a big buffer of tokenized examples per row costs start-up time.
      try_in_mem_cache=False,
      shuffle_buffer_size=EXAMPLE_SHUFFLE_BUFFER)
  if not repeat:
    ds = ds.take(tf.where(row < num_shards, tf.constant(-1, tf.int64), 0))
  task_id = tf.constant(task_id, tf.int32)
  return ds.map(
      lambda ex: {"inputs": ex["inputs"], "targets": ex["targets"],
                  TASK_IDS: tf.fill(tf.shape(ex["targets"]), task_id),
                  ENCODER_TASK_IDS: tf.fill(tf.shape(ex["inputs"]), task_id)},
      num_parallel_calls=tf.data.AUTOTUNE)


def _task_choices(spec: InputSpec, rates: Sequence[float], row: tf.Tensor) -> tf.data.Dataset:
  """Which task each of row `row`'s examples comes from: i.i.d. with the mixture's rates."""
  logits = tf.math.log(tf.constant([rates], tf.float32))
  row_seed = tf.random.experimental.stateless_fold_in(
      tf.constant([spec.seed, _MIX_SALT], tf.int64), row)

  def choose(i):
    seed = tf.random.experimental.stateless_fold_in(row_seed, i)
    return tf.cast(tf.random.stateless_categorical(logits, 1, seed=seed)[0, 0], tf.int64)

  return tf.data.Dataset.counter().map(choose)


def _row_dataset(row: tf.Tensor, spec: InputSpec, tasks: Sequence[seqio.Task],
                 rates: Sequence[float], num_rows: int, repeat: bool) -> tf.data.Dataset:
  """The endless stream of packed (or padded) rows that fills row `row` of every batch.

  With `repeat=False` each row is followed by all-zero padding rows; the second element of
  each item tells real rows from padding.
  """
  streams = [_task_stream(t, i, spec, row, num_rows, repeat) for i, t in enumerate(tasks)]
  if len(streams) == 1:
    ds = streams[0]
  else:
    ds = tf.data.Dataset.choose_from_datasets(
        streams, _task_choices(spec, rates, row), stop_on_empty_dataset=False)
  converter = TaskIdEncDecFeatureConverter(pack=spec.pack)
  ds = converter(ds, {"inputs": spec.inputs_length, "targets": spec.targets_length,
                      TASK_IDS: spec.targets_length, ENCODER_TASK_IDS: spec.inputs_length})
  ds = ds.map(lambda ex: (ex, True))
  if not repeat:
    padding = tf.data.Dataset.from_tensors(
        ({k: tf.zeros(s.shape, s.dtype) for k, s in ds.element_spec[0].items()}, False))
    ds = ds.concatenate(padding.repeat())
  return ds


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


def make_dataset(spec: InputSpec, global_batch_size: int, process_index: int = 0,
                 process_count: int = 1, start_step: int = 0,
                 repeat: bool = True) -> tf.data.Dataset:
  """The `tf.data.Dataset` behind `make_batches` (same arguments), for tf.data users."""
  tf_devices.hide_accelerators_from_tf()
  provider = registry.get_task_or_mixture(spec.mixture_or_task)
  tasks = _tasks(provider)
  _validate(spec, tasks, global_batch_size, process_index, process_count)
  if start_step < 0:
    raise ValueError(f"start_step={start_step} must be >= 0")
  rates = [provider.get_rate(t) for t in tasks] if isinstance(provider, seqio.Mixture) else [1.0]
  if sum(rates) <= 0:
    raise ValueError(f"mixture {spec.mixture_or_task!r} has no task with a positive rate")
  local = global_batch_size // process_count
  rows = tf.data.Dataset.range(process_index * local, (process_index + 1) * local)
  # Round-robin over the rows' streams (block_length=1, deterministic): element k is the
  # (k // local)-th row of stream k % local, so batching by `local` lines the rows up.
  ds = rows.interleave(
      lambda row: _row_dataset(row, spec, tasks, rates, global_batch_size, repeat),
      cycle_length=local, block_length=1, num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=True)
  ds = ds.batch(local)
  if not repeat:  # Stop once every row is padding.
    ds = ds.take_while(lambda ex, valid: tf.reduce_any(valid))
  ds = ds.map(lambda ex, valid: ex)
  ds = ds.skip(start_step).prefetch(2)
  options = tf.data.Options()
  # SeqIO chains many small per-example maps; fusing them roughly halves the per-example
  # overhead, which dominates on small CPU hosts.
  options.experimental_optimization.map_fusion = True
  return ds.with_options(options)


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


def make_batches(spec: InputSpec, global_batch_size: int, process_index: int = 0,
                 process_count: int = 1, start_step: int = 0,
                 repeat: bool = True) -> Iterator[dict[str, np.ndarray]]:
  """Yields this process's rows of each global batch as int32 numpy arrays.

  Args:
    spec: what to read (task or mixture, split, lengths, packing, shuffling, seed).
    global_batch_size: rows in the global batch, over all processes.
    process_index: this process's index; it gets rows
      [process_index * local, (process_index + 1) * local), local = global / process_count.
    process_count: number of processes sharing the global batch.
    start_step: skip this many batches (exact resume after a restart).
    repeat: loop over the data forever; if False, make one pass and pad the final batches
      with all-zero rows (loss weight 0).

  Returns:
    An iterator of dicts with the features in `MODEL_FEATURES`, each [local, length] int32;
    `decoder_task_ids` holds each target token's index into `task_names(...)`, 0 on padding.

  Raises:
    ValueError: (one line) for an unknown name or split, or a batch size that does not split.
  """
  ds = make_dataset(spec, global_batch_size, process_index, process_count, start_step, repeat)
  return _background(ds.as_numpy_iterator(), PREFETCH_BATCHES)
