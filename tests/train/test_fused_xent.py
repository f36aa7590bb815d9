"""The fused, blockwise cross-entropy gives today's loss, stats and gradients (fp32)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import synthetic
from t5jax.train import fused_xent, losses, optim, step as train_step
from t5jax.parallel import partitioning
from t5jax.model import config as model_config
from t5jax.model import t5

TIGHT = dict(rtol=2e-5, atol=1e-6)


def assert_trees_close(got, want, **tol):
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, **tol), got, want)


@pytest.mark.parametrize("layout,label_smoothing", [("VD", 0.1), ("DV", 0.0)])
def test_matches_full_logits_with_padding_weights_smoothing_and_z_loss(layout, label_smoothing):
  batch = synthetic.packed_batch(batch_size=4, length=13, vocab=40, num_tasks=3, seed=3)
  keys = jax.random.split(jax.random.key(1), 2)
  hidden_btd = jax.random.normal(keys[0], (4, 13, 16))
  kernel = jax.random.normal(keys[1], (40, 16) if layout == "VD" else (16, 40)) * 0.5
  # 8 tokens per block = 2 positions of 4 rows: 7 blocks, the last one padded.
  cfg = losses.LossConfig(z_loss=1e-2, label_smoothing=label_smoothing,
                          normalization="per_task", fused_block_tokens=8)
  scale_bt = losses.token_scales(batch["decoder_loss_weights"], batch["decoder_task_ids"],
                                 jnp.asarray([1.0, 0.3, 2.0]), cfg.normalization)

  def full(hidden_btd, kernel):
    logits_btv = jnp.einsum(f"BTD,{layout}->BTV", hidden_btd, kernel)
    return losses.loss_and_stats(logits_btv, batch, scale_bt, 3, cfg)

  def fused(hidden_btd, kernel):
    return fused_xent.fused_loss_and_stats(hidden_btd, kernel, layout, batch, scale_bt, 3, cfg)

  (want, want_stats), want_grads = jax.jit(jax.value_and_grad(full, (0, 1), has_aux=True))(
      hidden_btd, kernel)
  (got, got_stats), got_grads = jax.jit(jax.value_and_grad(fused, (0, 1), has_aux=True))(
      hidden_btd, kernel)
  np.testing.assert_allclose(got, want, **TIGHT)
  assert_trees_close(got_stats, want_stats, **TIGHT)
  assert_trees_close(got_grads, want_grads, **TIGHT)
  # Padding tokens pass no gradient; the primal (undifferentiated) call agrees too.
  pad_bt = np.asarray(batch["decoder_loss_weights"]) == 0
  assert pad_bt.any() and np.all(np.asarray(got_grads[0])[pad_bt] == 0)
  np.testing.assert_allclose(fused(hidden_btd, kernel)[0], want, **TIGHT)
  assert float(want_stats["z_loss_sum_k"].sum()) > 0


def test_bf16_activations_give_the_fp32_kernel_an_fp32_gradient():
  """bf16 matmuls, but the [D, V] kernel's gradient is summed over the blocks in fp32
  and returned in fp32: what one fp32-accumulated einsum over all tokens gives, not
  that rounded to bf16 (~3 significant digits)."""
  batch = synthetic.packed_batch(batch_size=4, length=16, vocab=64, num_tasks=1, seed=5)
  keys = jax.random.split(jax.random.key(2), 2)
  hidden_btd = jax.random.normal(keys[0], (4, 16, 32)).astype(jnp.bfloat16)
  kernel_dv = jax.random.normal(keys[1], (32, 64)) * 0.2  # fp32, as stored
  cfg = losses.LossConfig(z_loss=0.0, label_smoothing=0.0, fused_block_tokens=16)
  scale_bt = losses.token_scales(batch["decoder_loss_weights"], batch["decoder_task_ids"],
                                 jnp.ones(1), cfg.normalization)
  fused = lambda k: fused_xent.fused_loss_and_stats(hidden_btd, k, "DV", batch, scale_bt, 1,
                                                    cfg)[0]
  got_dv = jax.jit(jax.grad(fused))(kernel_dv)
  assert got_dv.dtype == jnp.float32
  # The same terms by hand: bf16 logits' softmax minus the target, bf16, times hidden.
  logits_btv = jnp.einsum("BTD,DV->BTV", hidden_btd, kernel_dv.astype(jnp.bfloat16),
                          preferred_element_type=jnp.float32)
  onehot_btv = jax.nn.one_hot(batch["decoder_target_tokens"], 64)
  dlogits_btv = (scale_bt[..., None] * (jax.nn.softmax(logits_btv) - onehot_btv))
  want_dv = jnp.einsum("BTV,BTD->DV", dlogits_btv.astype(jnp.bfloat16), hidden_btd,
                       preferred_element_type=jnp.float32)
  np.testing.assert_allclose(got_dv, want_dv, rtol=1e-5, atol=1e-6)
  rounded_dv = want_dv.astype(jnp.bfloat16).astype(jnp.float32)
  assert not np.allclose(rounded_dv, want_dv, rtol=1e-5, atol=1e-6)  # bf16 would fail


def test_block_length_covers_the_targets_with_least_padding():
  assert fused_xent.block_length(batch=32, length=114, block_tokens=512) == 15  # 8 x 15
  assert fused_xent.block_length(batch=32, length=64, block_tokens=512) == 16
  assert fused_xent.block_length(batch=64, length=10, block_tokens=8) == 1
  assert fused_xent.block_length(batch=1, length=10, block_tokens=4096) == 10


def test_bad_block_size_is_rejected():
  with pytest.raises(ValueError, match="fused_block_tokens must be >= 1, got 0"):
    losses.LossConfig(fused_block_tokens=0)


@functools.lru_cache(maxsize=None)
def step_outputs(model_name: str, fused: bool, microbatches: int):
  """One jitted train step's metrics and updated parameters."""
  cfg = model_config.get_config(model_name, dtype="float32", vocab_size=256, dropout_rate=0.0,
                                num_encoder_layers=1, num_decoder_layers=1)
  model = t5.Transformer(cfg)
  opt = optim.OptimizerConfig(name="adafactor")
  tx = optim.make_optimizer(opt)
  loss_cfg = losses.LossConfig(z_loss=1e-3, label_smoothing=0.1, task_weights={"b": 0.5},
                               fused_cross_entropy=fused, fused_block_tokens=24)
  mesh = partitioning.make_mesh(partitioning.MeshConfig(data=1), devices=jax.devices()[:1])
  batch = synthetic.packed_batch(8, 16, vocab=256)
  with partitioning.sharding_context(mesh):
    state, shardings = train_step.create_train_state(model, tx, mesh, seed=0)
    step = train_step.jit_train_step(
        mesh, shardings, train_step.StepSettings(
            model=model, tx=tx, loss_cfg=loss_cfg,
            task_weights_k=loss_cfg.weights_vector(["a", "b"]), microbatches=microbatches,
            schedule=optim.learning_rate_schedule(opt)))
    state, metrics = step(state, partitioning.host_batch_to_global(batch, mesh))
  return jax.device_get((metrics, state.params))


@pytest.mark.parametrize("model_name,microbatches", [("t5_1_0_tiny", 1), ("t5_1_1_tiny", 2)],
                         ids=["t5_1_0_tied_scaled", "t5_1_1_untied_microbatches"])
def test_train_step_same_with_fused_on_and_off(model_name, microbatches):
  want_metrics, want_params = step_outputs(model_name, False, microbatches)
  got_metrics, got_params = step_outputs(model_name, True, microbatches)
  for name in ("loss", "grad_norm", "cross_entropy", "z_loss", "accuracy", "loss_sum_k",
               "contribution_k", "correct_k"):
    np.testing.assert_allclose(got_metrics[name], want_metrics[name], rtol=2e-5, err_msg=name)
  # Adafactor's update of every parameter, including the tied embedding (input
  # and scaled output projection) or the untied logits_dense.
  assert_trees_close(got_params, want_params, rtol=1e-5, atol=1e-7)
  assert ("logits_dense" in got_params["decoder"]) == (model_name == "t5_1_1_tiny")
