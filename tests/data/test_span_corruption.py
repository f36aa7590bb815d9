"""T5 span corruption: lengths, sentinel layout, and exact restoration."""

import numpy as np
import pytest
import seqio
import tensorflow as tf

from t5jax.data import noise
from t5jax.data import span_corruption as sc
from t5jax.data import tasks  # noqa: F401  (registers text_span_corruption)
from t5jax.data import vocab

VOCAB = 32100


def _formula(tokens_length, density=0.15, span=3.0):
  noise = int(round(tokens_length * density))
  spans = int(round(noise / span))
  return tokens_length - noise + spans + 1, noise + spans + 1


@pytest.mark.parametrize("inputs_length, expected", [(512, (568, 114)), (64, (70, 14)),
                                                     (128, (141, 29)), (1024, (1137, 229))])
def test_lengths_match_random_spans_helper(inputs_length, expected):
  tokens_length, targets_length = sc.span_corruption_lengths(inputs_length)
  assert (tokens_length, targets_length) == expected
  # The largest raw length whose corrupted inputs still fit.
  assert _formula(tokens_length)[0] <= inputs_length < _formula(tokens_length + 1)[0]
  assert _formula(tokens_length)[1] == targets_length


def test_corrupting_many_equals_corrupting_each():
  tokens = np.random.default_rng(0).integers(3, 32000, (16, 568))
  keys = np.arange(16) * 7919
  inputs, targets = noise.corrupt_batch(tokens, keys, 5, VOCAB)
  for i in range(16):
    one = noise.corrupt(tokens[i], (keys[i], 5), VOCAB)
    np.testing.assert_array_equal(inputs[i], one[0])
    np.testing.assert_array_equal(targets[i], one[1])


def test_noise_mask_density_and_spans():
  mask = noise.noise_mask(568, (1, 2), 0.15, 3.0)
  assert mask.sum() == round(568 * 0.15) == 85
  assert not mask[0]  # Spans start after a non-noise token.
  starts = np.flatnonzero(mask & ~np.concatenate([[False], mask[:-1]]))
  assert len(starts) == round(85 / 3) == 28


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_corrupt_then_fill_restores_tokens(seed):
  tokens = tf.random.stateless_uniform([568], [seed, 0], 3, 32000, dtype=tf.int32)
  inputs, targets = sc.corrupt(tokens, tf.constant([[seed, 1], [seed, 2]]), VOCAB)
  inputs, targets = inputs.numpy(), targets.numpy()
  assert (len(inputs) + 1, len(targets) + 1) == (512, 114)  # + EOS = T5's lengths.
  sentinels_in = inputs[inputs >= VOCAB - 100]
  sentinels_out = targets[targets >= VOCAB - 100]
  # <extra_id_0> = 32099, then counting down, in order, once per span on both sides.
  np.testing.assert_array_equal(sentinels_in, VOCAB - 1 - np.arange(28))
  np.testing.assert_array_equal(sentinels_out, sentinels_in)
  assert targets[0] == VOCAB - 1
  np.testing.assert_array_equal(sc.fill_sentinels(inputs, targets, VOCAB), tokens.numpy())


def test_task_examples(t5jax_data_dir):
  del t5jax_data_dir
  task = seqio.get_mixture_or_task("text_span_corruption")
  ds = task.get_dataset({"inputs": 512, "targets": 114}, split="validation", shuffle=False,
                        seed=3, num_epochs=1)
  v = vocab.get_vocabulary()
  examples = list(ds.take(3).as_numpy_iterator())
  for ex in examples:
    inputs, targets = ex["inputs"], ex["targets"]
    # Full segments corrupt to exactly the T5 lengths, EOS included.
    assert (len(inputs), len(targets)) == (512, 114)
    assert inputs[-1] == targets[-1] == 1
    assert targets[0] == 32099
    restored = sc.fill_sentinels(inputs, targets, 32100)
    assert len(restored) == 568 and not np.any(restored >= 32000)
    assert len(v.decode(restored.tolist())) > 1000  # Real text, ~2 chars per token or more.
  # Same seed, same corruption; another seed, another corruption.
  again = list(task.get_dataset({"inputs": 512, "targets": 114}, split="validation",
                                shuffle=False, seed=3, num_epochs=1).take(1).as_numpy_iterator())
  np.testing.assert_array_equal(again[0]["inputs"], examples[0]["inputs"])
  other = list(task.get_dataset({"inputs": 512, "targets": 114}, split="validation",
                                shuffle=False, seed=4, num_epochs=1).take(1).as_numpy_iterator())
  assert not np.array_equal(other[0]["inputs"], examples[0]["inputs"])
  np.testing.assert_array_equal(sc.fill_sentinels(other[0]["inputs"], other[0]["targets"], 32100),
                                sc.fill_sentinels(examples[0]["inputs"], examples[0]["targets"],
                                                  32100))


def test_short_targets_length_is_a_clear_error(t5jax_data_dir):
  del t5jax_data_dir
  task = seqio.get_mixture_or_task("text_span_corruption")
  with pytest.raises(ValueError, match=r"targets_length=50 is too short .* use targets_length >= 114"):
    task.get_dataset({"inputs": 512, "targets": 50}, split="validation", shuffle=False)
