"""Loss formulas, per-task weighting and the learning-rate schedule, on real numbers."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import synthetic
from t5jax.train import losses, optim


def test_label_smoothing_matches_explicit_soft_target_cross_entropy():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(2, 3, 11)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, 11, (2, 3)), jnp.int32)
  ls = 0.1
  got, _ = losses.token_losses(logits, targets, z_loss=0.0, label_smoothing=ls)
  conf, low = 1 - ls, ls / 10
  soft = jax.nn.one_hot(targets, 11) * (conf - low) + low
  ce = -jnp.sum(soft * jax.nn.log_softmax(logits), axis=-1)
  const = -(conf * np.log(conf) + 10 * low * np.log(low))
  np.testing.assert_allclose(got, ce - const, rtol=1e-5, atol=1e-6)
  # A perfect prediction of the smoothed distribution has zero loss.
  perfect = jnp.log(soft)
  zero, _ = losses.token_losses(perfect, targets, 0.0, ls)
  np.testing.assert_allclose(zero, 0.0, atol=1e-5)


def test_z_loss_is_coefficient_times_log_z_squared():
  logits = jnp.asarray([[[1.0, 2.0, 3.0]]])
  total, z = losses.token_losses(logits, jnp.asarray([[2]]), z_loss=1e-4, label_smoothing=0.0)
  log_z = float(jax.nn.logsumexp(logits))
  np.testing.assert_allclose(z, 1e-4 * log_z**2, rtol=1e-6)
  np.testing.assert_allclose(total, log_z - 3.0 + 1e-4 * log_z**2, rtol=1e-6)


@pytest.mark.parametrize("normalization", ["tokens", "per_task", 100.0])
def test_weighted_task_contributions_add_up_to_the_loss(normalization):
  batch = synthetic.packed_batch(batch_size=4, length=16, vocab=50, num_tasks=3, seed=1)
  logits = jnp.asarray(np.random.default_rng(2).normal(size=(4, 16, 50)), jnp.float32)
  weights_k = jnp.asarray([1.0, 0.5, 2.0])
  cfg = losses.LossConfig(normalization=normalization, z_loss=1e-4)
  scale = losses.token_scales(batch["decoder_loss_weights"], batch["decoder_task_ids"],
                              weights_k, normalization)
  loss, stats = losses.loss_and_stats(logits, batch, scale, 3, cfg)
  np.testing.assert_allclose(np.sum(stats["contribution_k"]), loss, rtol=1e-6)
  # L = sum_t w_t L_t with L_t the task's mean (per_task) or share (tokens).
  mean_k = stats["loss_sum_k"] / stats["tokens_k"]
  if normalization == "per_task":
    np.testing.assert_allclose(loss, np.sum(weights_k * mean_k), rtol=1e-5)
  elif normalization == "tokens":
    expected = np.sum(weights_k * stats["loss_sum_k"]) / np.sum(stats["tokens_k"])
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
  else:
    np.testing.assert_allclose(loss, np.sum(weights_k * stats["loss_sum_k"]) / 100.0, rtol=1e-5)


def test_unknown_task_weight_is_rejected():
  with pytest.raises(ValueError, match=r"not tasks of this run"):
    losses.LossConfig(task_weights={"nope": 2.0}).weights_vector(["a", "b"])


def test_t5_pretraining_schedule():
  """0.01 for the first 10k steps, then 1/sqrt(step)."""
  schedule = optim.learning_rate_schedule(optim.OptimizerConfig())
  for step, lr in [(0, 0.01), (5000, 0.01), (10_000, 0.01), (40_000, 0.005), (250_000, 0.002)]:
    np.testing.assert_allclose(float(schedule(step)), lr, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(max(step, 10_000))), 1 / np.sqrt(max(step, 10_000)),
                               rtol=1e-6)


def test_warmup_then_linear_decay():
  cfg = optim.OptimizerConfig(name="adamw", learning_rate=1e-3, warmup_steps=10, decay_start=10,
                              decay="linear", total_steps=110, end_learning_rate=1e-4)
  schedule = optim.learning_rate_schedule(cfg)
  np.testing.assert_allclose(float(schedule(4)), 5e-4, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(60)), 5.5e-4, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(500)), 1e-4, rtol=1e-6)


def test_gradient_clipping_caps_the_global_norm():
  """AdamW's first moment after one step is (1 - b1) * the clipped gradient."""
  tx = optim.make_optimizer(optim.OptimizerConfig(name="adamw", clip_grad_norm=1.0,
                                                   learning_rate=1.0, decay="constant"))
  params = {"w": jnp.zeros(4)}
  grads = {"w": jnp.asarray([30.0, 40.0, 0.0, 0.0])}
  _, state = tx.update(grads, tx.init(params), params)
  mu = optim.optax.tree_utils.tree_get(state, "mu")["w"]
  np.testing.assert_allclose(np.asarray(mu), 0.1 * np.asarray([0.6, 0.8, 0.0, 0.0]), rtol=1e-6)
