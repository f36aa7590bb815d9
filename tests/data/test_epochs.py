"""The pipeline's order over epochs: a fresh shuffle each epoch, each example once per epoch
across all rows and processes, packing as SeqIO packs, and positions far into a run."""

import itertools

import numpy as np
import pytest
import seqio
import tensorflow as tf

from t5jax.data import example_ops
from t5jax.data import index_random
from t5jax.data import pipeline
from t5jax.data import task_recipe
from t5jax.data.pipeline import InputSpec

# glue_rte's 2,490 training examples; short lengths keep one example per row cheap to read.
TASK, NUM_EXAMPLES, ROWS = "glue_rte", 2490, 8
SPEC = InputSpec(TASK, inputs_length=16, targets_length=4, pack=False, seed=7, num_workers=0)


def _ids(batches) -> list[np.ndarray]:
  """Per batch, each row's stored example index (one example per row: unpacked)."""
  return [b[pipeline.packing.EXAMPLE_IDS][:, 0] for b in batches]


def _read(process_count: int, num_batches: int) -> np.ndarray:
  """[batches, global rows] example ids, the rows of `process_count` processes merged."""
  parts = []
  for p in range(process_count):
    it = pipeline.make_batches(SPEC, ROWS, p, process_count, example_ids=True)
    parts.append(np.stack(_ids(itertools.islice(it, num_batches))))
  return np.concatenate(parts, axis=1)


@pytest.fixture(scope="module")
def one_process(t5jax_data_dir):
  del t5jax_data_dir
  # Two epochs and a bit: 2 * 2490 / 8 rows = 622.5 batches.
  return _read(1, 640)


@pytest.mark.parametrize("process_count", [1, 2, 4])
def test_every_example_is_read_once_per_epoch(one_process, process_count):
  ids = one_process if process_count == 1 else _read(process_count, 320)
  np.testing.assert_array_equal(ids, one_process[:len(ids)])
  # Position k of the task's stream is row k % B's (k // B)-th example.
  stream = ids.reshape(-1)
  first_epoch = stream[:NUM_EXAMPLES]
  np.testing.assert_array_equal(np.sort(first_epoch), np.arange(NUM_EXAMPLES))
  if process_count == 1:
    second = stream[NUM_EXAMPLES:2 * NUM_EXAMPLES]
    np.testing.assert_array_equal(np.sort(second), np.arange(NUM_EXAMPLES))


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
  ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
  return float(np.corrcoef(ra, rb)[0, 1])


def test_each_epoch_is_a_fresh_order(one_process):
  stream = one_process.reshape(-1)
  epoch0, epoch1 = stream[:NUM_EXAMPLES], stream[NUM_EXAMPLES:2 * NUM_EXAMPLES]
  # Where each example comes in epoch 0 and in epoch 1: unrelated orders.
  position0, position1 = np.argsort(epoch0), np.argsort(epoch1)
  assert abs(_spearman(position0, position1)) < 0.06
  # Not file order either.
  assert abs(_spearman(position0, np.arange(NUM_EXAMPLES))) < 0.06
  # A row reads another random eighth of the examples in the second epoch (two random
  # eighths share 1/8 of their examples; the same slice would share all), in an unrelated
  # order.
  row0 = one_process[:, 0]
  per_epoch = NUM_EXAMPLES // ROWS
  a, b = row0[:per_epoch], row0[per_epoch + 1:2 * per_epoch + 1]
  assert len(set(a) & set(b)) < 2 * per_epoch / ROWS
  assert abs(_spearman(a, b[:len(a)])) < 0.2


def test_keyed_permutation_is_a_permutation_for_any_size():
  for n in (1, 2, 3, 5, 64, 1000, 4097):
    p = index_random.permute(np.arange(n), n, 3, 9)
    np.testing.assert_array_equal(np.sort(p), np.arange(n))
  assert not np.array_equal(index_random.permute(np.arange(1000), 1000, 3, 9),
                            index_random.permute(np.arange(1000), 1000, 3, 10))


def test_a_position_a_million_steps_in_reads_directly(t5jax_data_dir):
  """A position is just counts: one far into a run gives its batch at once, and the
  examples it names are those of that epoch's permutation."""
  del t5jax_data_dir
  counts = np.full((ROWS, 1), 10**6)
  position = np.concatenate([counts, counts], axis=1)
  batch = next(pipeline.make_batches(SPEC, ROWS, state=position, example_ids=True))
  k = np.arange(ROWS) + ROWS * 10**6  # The rows' stream positions.
  expected = example_ops.example_ids(k, NUM_EXAMPLES, True, SPEC.seed,
                                     pipeline.packing.task_key(TASK))
  np.testing.assert_array_equal(batch[pipeline.packing.EXAMPLE_IDS][:, 0], expected)


def test_packing_matches_seqio_feature_converter(t5jax_data_dir):
  """The numpy packer puts the same examples where SeqIO's EncDecFeatureConverter does."""
  del t5jax_data_dir
  spec = InputSpec("multi30k_en_fr", inputs_length=64, targets_length=64, shuffle=False,
                   seed=0, num_workers=0)
  rows = 2
  batch = next(pipeline.make_batches(spec, rows, example_ids=True))
  task = seqio.get_mixture_or_task("multi30k_en_fr")
  view = example_ops.TaskView(task_recipe.recipe(task, "train", {"inputs": 64, "targets": 64}))
  for pack in (True, False):
    b = batch if pack else next(pipeline.make_batches(
        InputSpec("multi30k_en_fr", inputs_length=64, targets_length=64, shuffle=False,
                  pack=False, num_workers=0), rows, example_ids=True))
    for row in range(rows):
      ids = [i for i in dict.fromkeys(b[pipeline.packing.EXAMPLE_IDS][row]) if i >= 0]
      examples = view.examples(np.array(ids), np.zeros(len(ids), np.int64))
      ds = tf.data.Dataset.from_generator(
          lambda ex=examples: ({"inputs": i, "targets": t} for i, t in ex),
          output_signature={"inputs": tf.TensorSpec([None], tf.int32),
                            "targets": tf.TensorSpec([None], tf.int32)})
      converted = next(seqio.EncDecFeatureConverter(pack=pack)(
          ds, {"inputs": 64, "targets": 64}).as_numpy_iterator())
      for key, value in converted.items():
        np.testing.assert_array_equal(b[key][row], value, err_msg=f"{key} pack={pack}")
      if pack:  # The same packing for a list of examples (benchmarks/end_to_end.py).
        listed = pipeline.packing.pack_examples(examples, {"inputs": 64, "targets": 64})
        for key, value in converted.items():
          np.testing.assert_array_equal(listed[key][0], value, err_msg=key)
