"""Mixing rates: the T5 paper's formulas, TFDS counts, and the sampled proportions."""

import itertools

import numpy as np
import pytest
import seqio

from t5jax.data import mixtures
from t5jax.data import pipeline
from t5jax.data import tasks


def test_examples_proportional_formula():
  rates = mixtures.examples_proportional_rates([29000, 8551, 2490], cap=2**14)
  np.testing.assert_allclose(rates, np.array([16384, 8551, 2490]) / (16384 + 8551 + 2490))
  np.testing.assert_allclose(mixtures.examples_proportional_rates([10, 30], cap=1e9), [0.25, 0.75])


def test_temperature_and_equal_formulas():
  r = mixtures.examples_proportional_rates([100, 400], cap=1e9)  # [0.2, 0.8]
  t2 = mixtures.temperature_scaled_rates([100, 400], cap=1e9, temperature=2.0)
  np.testing.assert_allclose(t2, np.sqrt(r) / np.sqrt(r).sum())  # [1/3, 2/3]
  np.testing.assert_allclose(t2, [1 / 3, 2 / 3])
  np.testing.assert_allclose(
      mixtures.temperature_scaled_rates([100, 400], cap=1e9, temperature=1.0), r)
  np.testing.assert_allclose(mixtures.equal_rates(4), [0.25] * 4)


def _train_counts(names):
  return [seqio.get_mixture_or_task(n).num_input_examples("train") for n in names]


def test_registered_rates_follow_the_formulas(t5jax_data_dir):
  del t5jax_data_dir
  K = mixtures.DEFAULT_CAP
  glue = pipeline.task_names("glue_mix")
  assert glue == ["glue_cola", "glue_rte", "glue_sst2"]
  assert _train_counts(glue) == [8551, 2490, 67349]  # From the TFDS split info.
  got = mixtures.normalized_rates(seqio.get_mixture_or_task("glue_mix"))
  np.testing.assert_allclose(list(got.values()),
                             mixtures.examples_proportional_rates(_train_counts(glue), K))
  names = pipeline.task_names("multitask_mix")
  assert names == sorted(tasks.SUPERVISED_TASKS + tasks.PRETRAINING_TASKS)
  got = mixtures.normalized_rates(seqio.get_mixture_or_task("multitask_mix"))
  np.testing.assert_allclose(list(got.values()),
                             mixtures.temperature_scaled_rates(_train_counts(names), K, 2.0))
  got = mixtures.normalized_rates(seqio.get_mixture_or_task("multi30k_mix"))
  assert got == {"multi30k_en_de": 0.5, "multi30k_en_fr": 0.5}
  assert set(pipeline.task_names("supervised_mix")) == set(tasks.SUPERVISED_TASKS)


def test_sampled_proportions_match_rates(t5jax_data_dir):
  del t5jax_data_dir
  spec = pipeline.InputSpec("glue_mix", inputs_length=48, targets_length=8, seed=11)
  counts = np.zeros(3)
  for b in itertools.islice(pipeline.make_batches(spec, 16), 80):
    for row in range(16):
      seg, ids = b["decoder_segment_ids"][row], b["decoder_task_ids"][row]
      for s in np.unique(seg[seg > 0]):
        counts[ids[seg == s][0]] += 1
  n = counts.sum()
  assert n > 2000
  rates = np.array(list(mixtures.normalized_rates(seqio.get_mixture_or_task("glue_mix")).values()))
  # Each row's task sequence is i.i.d. with these rates: 4.5 binomial standard deviations.
  bound = 4.5 * np.sqrt(rates * (1 - rates) / n)
  assert np.all(np.abs(counts / n - rates) < bound), (counts / n, rates, bound)
