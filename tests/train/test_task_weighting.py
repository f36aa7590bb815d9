"""Dynamic task weighting: uncertainty (Kendall et al. 2018) and DWA (Liu et al.
2019) match their formulas by hand and inside the step, resume exactly, log per
task; fixed weights give the loss of a direct computation."""
import json
import math
import os

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import synthetic
import tiny
from t5jax import checkpoint
from t5jax.train import losses, optim, step as train_step, task_weighting
from t5jax.parallel import partitioning
from t5jax.model import config as model_config
from t5jax.model import t5

CFG = model_config.get_config("t5_1_1_tiny", dtype="float32", vocab_size=512, dropout_rate=0.0)
OPT = optim.OptimizerConfig(name="adamw", learning_rate=1e-3, decay_start=0, decay="constant")
TASKS = ["a", "b"]
UNCERTAINTY = losses.LossConfig(task_weights={"b": 2.0}, normalization="per_task",
                                task_weighting="uncertainty")
DWA = losses.LossConfig(task_weights={"b": 0.5}, task_weighting="dwa", dwa_window=2)


class Stepper:
  """A one-device tiny T5 and its jitted step under `loss_cfg`."""

  def __init__(self, loss_cfg, opt=OPT):
    self.mesh = partitioning.make_mesh(partitioning.MeshConfig(data=1),
                                       devices=jax.devices()[:1])
    self.model = t5.Transformer(CFG)
    self.tx = optim.make_optimizer(opt)
    self.task_state = task_weighting.init_state(loss_cfg, len(TASKS))
    with partitioning.sharding_context(self.mesh):
      self.state, self.shardings = train_step.create_train_state(
          self.model, self.tx, self.mesh, seed=0, task_state=self.task_state)
      self._step = train_step.jit_train_step(
          self.mesh, self.shardings, train_step.StepSettings(
              model=self.model, tx=self.tx, loss_cfg=loss_cfg,
              task_weights_k=loss_cfg.weights_vector(TASKS), microbatches=1,
              schedule=optim.learning_rate_schedule(opt)))

  def step(self, state, batch):
    """(new state, metrics as numpy); `state` is donated."""
    with partitioning.sharding_context(self.mesh):
      state, m = self._step(state, partitioning.host_batch_to_global(batch, self.mesh))
    return state, {k: np.asarray(v) for k, v in m.items()}


def batches(n, easy_task=None):
  """Random packed batches; tokens of `easy_task` all have target 7 (learnable)."""
  for seed in range(n):
    b = synthetic.packed_batch(8, vocab=500, seed=seed)
    if easy_task is not None:
      easy = (b["decoder_task_ids"] == easy_task) & (b["decoder_loss_weights"] > 0)
      b["decoder_target_tokens"] = np.where(easy, 7, b["decoder_target_tokens"]).astype(np.int32)
    yield b


# ---------------------------------------------------------------- uncertainty

def test_uncertainty_weights_and_objective_by_hand():
  s_k = jnp.array([0.0, math.log(2.0)])
  w_k = jnp.array([1.0, 3.0])
  mean_loss_k = jnp.array([2.0, 0.5])
  weights = task_weighting.weights_in_use(UNCERTAINTY, {"log_var_k": s_k}, 0, w_k)
  np.testing.assert_allclose(weights, [1.0, 1.5], rtol=1e-6)  # w_t exp(-s_t)
  # exp(0) 1 2 + 0  +  exp(-ln 2) 3 0.5 + ln 2 = 2 + 0.75 + 0.693147
  both = task_weighting.uncertainty_objective(s_k, mean_loss_k, jnp.array([True, True]), w_k)
  np.testing.assert_allclose(both, 3.4431472, rtol=1e-6)
  # A task absent from the batch contributes nothing, not even s_t.
  only_a = task_weighting.uncertainty_objective(s_k, mean_loss_k, jnp.array([True, False]), w_k)
  np.testing.assert_allclose(only_a, 2.0, rtol=1e-6)


def test_uncertainty_gradient_is_the_analytic_one():
  rng = np.random.default_rng(0)
  s_k = jnp.asarray(rng.normal(size=5), jnp.float32)
  mean_loss_k = jnp.asarray(rng.uniform(0.1, 8.0, size=5), jnp.float32)
  present_k = jnp.array([True, True, False, True, True])
  grad = jax.grad(task_weighting.uncertainty_objective)
  # dL/ds_t = -exp(-s_t) L_t + 1 (w_t = 1); 0 for a task not in the batch.
  expected = np.where(present_k, -np.exp(-s_k) * mean_loss_k + 1.0, 0.0)
  np.testing.assert_allclose(grad(s_k, mean_loss_k, present_k, jnp.ones(5)), expected, rtol=1e-6)
  w_k = jnp.asarray(rng.uniform(0.5, 2.0, size=5), jnp.float32)
  np.testing.assert_allclose(grad(s_k, mean_loss_k, present_k, w_k),
                             np.where(present_k, -np.exp(-s_k) * w_k * mean_loss_k + 1.0, 0.0),
                             rtol=1e-6)


def test_uncertainty_inside_the_step_follows_the_formula():
  stepper = Stepper(UNCERTAINTY)
  w_k = np.array([1.0, 2.0])
  adam = optax.adam(UNCERTAINTY.uncertainty_learning_rate)
  s_k, adam_state = np.zeros(2, np.float32), adam.init(jnp.zeros(2))
  state = stepper.state
  for batch in batches(3):
    state, m = stepper.step(state, batch)
    mean_loss_k = m["loss_sum_k"] / m["tokens_k"]
    assert (m["tokens_k"] > 0).all()
    np.testing.assert_allclose(m["log_var_k"], s_k, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(m["task_weight_k"], w_k * np.exp(-s_k), rtol=1e-6)
    # L = sum_t exp(-s_t) w_t L_t + s_t, and the contributions add up to it.
    np.testing.assert_allclose(m["loss"], np.sum(np.exp(-s_k) * w_k * mean_loss_k + s_k),
                               rtol=1e-5)
    np.testing.assert_allclose(m["contribution_k"], np.exp(-s_k) * w_k * mean_loss_k + s_k,
                               rtol=1e-5)
    # s_t takes one Adam step on the analytic gradient -exp(-s_t) w_t L_t + 1.
    updates, adam_state = adam.update(jnp.asarray(-np.exp(-s_k) * w_k * mean_loss_k + 1.0),
                                      adam_state)
    s_k = np.asarray(optax.apply_updates(jnp.asarray(s_k), updates))
    np.testing.assert_allclose(state.task_state["log_var_k"], s_k, rtol=1e-5, atol=1e-7)


def test_the_task_with_the_higher_loss_gets_the_larger_log_variance():
  # Task "a" always has target 7 (learnt in a step or two), "b" random tokens.
  cfg = losses.LossConfig(normalization="per_task", task_weighting="uncertainty",
                          uncertainty_learning_rate=0.1)
  opt = optim.OptimizerConfig(name="adamw", learning_rate=1e-2, warmup_steps=0,
                              decay_start=0, decay="constant")
  stepper = Stepper(cfg, opt)
  state, history = stepper.state, []
  for batch in batches(6, easy_task=0):
    state, m = stepper.step(state, batch)
    history.append(m)
  easy_loss, hard_loss = history[-1]["loss_sum_k"] / history[-1]["tokens_k"]
  assert hard_loss > 5.0 and easy_loss < 2.0, (easy_loss, hard_loss)
  s_hard = [float(m["log_var_k"][1]) for m in history] + [float(state.task_state["log_var_k"][1])]
  assert all(b > a for a, b in zip(s_hard, s_hard[1:])), s_hard  # grows every step
  s_easy, s_hard_end = np.asarray(state.task_state["log_var_k"])
  assert s_hard_end > s_easy + 0.2, (s_easy, s_hard_end)
  weights = history[-1]["task_weight_k"]
  assert weights[1] < weights[0] < 1.0, weights


# ------------------------------------------------------------------------ DWA

def test_dwa_weights_by_hand():
  last_k, prev_k = jnp.array([1.0, 0.5]), jnp.array([2.0, 0.5])
  # r = (0.5, 1.0); K exp(r_t / 2) / sum_j exp(r_j / 2)
  e_a, e_b = math.exp(0.25), math.exp(0.5)
  expected = [2 * e_a / (e_a + e_b), 2 * e_b / (e_a + e_b)]  # 0.875646, 1.124354
  np.testing.assert_allclose(task_weighting.dwa_factors(last_k, prev_k, 2, 2.0), expected,
                             rtol=1e-6)
  np.testing.assert_allclose(expected, [0.875646, 1.124354], rtol=1e-5)
  # The first two windows have weight 1, whatever the means.
  for window in (0, 1):
    np.testing.assert_array_equal(task_weighting.dwa_factors(last_k, prev_k, window, 2.0),
                                  [1.0, 1.0])
  # A task not seen yet (mean 0) has ratio 1: here both ratios are 1, so equal weights.
  np.testing.assert_allclose(
      task_weighting.dwa_factors(jnp.array([3.0, 0.0]), jnp.array([3.0, 0.0]), 5, 2.0), [1, 1])
  # The factors multiply LossConfig.task_weights; window = step // dwa_window.
  state = {"last_mean_k": last_k, "prev_mean_k": prev_k}
  np.testing.assert_allclose(
      task_weighting.weights_in_use(DWA, state, 4, jnp.array([1.0, 0.5])),
      [expected[0], 0.5 * expected[1]], rtol=1e-6)
  np.testing.assert_array_equal(
      task_weighting.weights_in_use(DWA, state, 3, jnp.array([1.0, 0.5])), [1.0, 0.5])


def test_dwa_inside_the_step_uses_the_last_two_windows():
  stepper = Stepper(DWA)  # dwa_window 2, temperature 2, task_weights {"b": 0.5}
  w_k = np.array([1.0, 0.5])
  state, history = stepper.state, []
  for batch in batches(7):
    state, m = stepper.step(state, batch)
    history.append(m)
    # "tokens" normalisation: L = sum_t weight_t loss_sum_t / tokens.
    np.testing.assert_allclose(
        m["loss"], np.sum(m["task_weight_k"] * m["loss_sum_k"]) / m["tokens_k"].sum(), rtol=1e-5)
  window_mean = lambda k: (sum(history[i]["loss_sum_k"] for i in (2 * k, 2 * k + 1))
                           / sum(history[i]["tokens_k"] for i in (2 * k, 2 * k + 1)))
  for step in range(4):  # windows 0 and 1
    np.testing.assert_array_equal(history[step]["task_weight_k"], w_k)
  for step, (last, prev) in {4: (1, 0), 5: (1, 0), 6: (2, 1)}.items():
    r_k = window_mean(last) / window_mean(prev)
    expected = w_k * 2 * np.exp(r_k / 2.0) / np.sum(np.exp(r_k / 2.0))
    np.testing.assert_allclose(history[step]["task_weight_k"], expected, rtol=1e-5)
  assert not np.allclose(history[4]["task_weight_k"], w_k)
  # Step 6 opened window 3, which is not closed yet: the state holds its sums.
  np.testing.assert_allclose(state.task_state["window_loss_sum_k"], history[6]["loss_sum_k"],
                             rtol=1e-6)


# ---------------------------------------------------------------------- fixed

def test_fixed_weights_give_the_direct_loss():
  cfg = losses.LossConfig(task_weights={"b": 0.5})
  stepper = Stepper(cfg)
  assert stepper.state.task_state == {}
  batch = next(batches(1))
  params = jax.device_get(stepper.state.params)

  @jax.jit
  def direct(params, batch):
    logits_btv = stepper.model.apply(
        {"params": params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"],
        batch["encoder_segment_ids"], batch["decoder_segment_ids"], enable_dropout=False)
    scale_bt = losses.token_scales(batch["decoder_loss_weights"], batch["decoder_task_ids"],
                                   cfg.weights_vector(TASKS), cfg.normalization)
    return losses.loss_and_stats(logits_btv, batch, scale_bt, len(TASKS), cfg)

  loss, stats = direct(params, batch)
  _, m = stepper.step(stepper.state, batch)
  np.testing.assert_allclose(m["loss"], loss, rtol=1e-6)
  np.testing.assert_allclose(m["contribution_k"], stats["contribution_k"], rtol=1e-6)
  assert "task_weight_k" not in m and "log_var_k" not in m


# --------------------------------------------------------------------- resume

@pytest.mark.parametrize("cfg", [UNCERTAINTY, DWA], ids=["uncertainty", "dwa"])
def test_task_state_is_checkpointed_and_resumes_exactly(cfg, tmp_path):
  stepper = Stepper(cfg)
  data = list(batches(6))
  state = stepper.state
  for batch in data[:3]:  # for DWA, stop in the middle of window 1
    state, _ = stepper.step(state, batch)
  ckpt = checkpoint.Checkpointer(str(tmp_path), checkpoint.CheckpointConfig(async_save=False))
  ckpt.save(state, {"model_config": {}})
  ckpt.close()
  saved_task_state = jax.device_get(state.task_state)

  abstract = train_step.abstract_train_state(stepper.model, stepper.tx,
                                             task_state=stepper.task_state)
  restored, _, _ = checkpoint.Checkpointer(str(tmp_path), checkpoint.CheckpointConfig()
                                        ).restore_latest(abstract, stepper.shardings)
  for a, b in zip(jax.tree.leaves(jax.device_get(restored.task_state)),
                  jax.tree.leaves(saved_task_state)):
    np.testing.assert_array_equal(a, b)
  for batch in data[3:]:
    state, uninterrupted = stepper.step(state, batch)
    restored, resumed = stepper.step(restored, batch)
    for key in ("loss", "task_weight_k", "contribution_k"):
      np.testing.assert_array_equal(resumed[key], uninterrupted[key], err_msg=key)


# ------------------------------------------------------ end to end, real data

RUN = tiny.bindings("TrainConfig.num_steps=8",
                    "TrainConfig.log_every=2",
                    "TrainConfig.num_sample_predictions=0",
                    "LossConfig.dwa_window=2")


@pytest.fixture
def gin_cleared_after():
  """Leaves no gin bindings behind: a bound LossConfig would change later tests'."""
  yield
  gin.clear_config()


def _train(run_dir, *bindings):
  from t5jax import config as gin_config
  from t5jax.train import loop, run_config
  gin_config.parse_gin(["runs/demo.gin"], RUN + list(bindings))
  loop.train(run_dir, run_config.TrainConfig())
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if r["split"] == "train"]


def test_dwa_run_logs_the_weights_per_task(tmp_path, gin_cleared_after):
  records = _train(str(tmp_path), "LossConfig.task_weighting='dwa'")
  assert [r["step"] for r in records] == [2, 4, 6, 8]
  weights = [(r["tasks/multi30k_en_fr/weight"], r["tasks/multi30k_en_de/weight"])
             for r in records]
  assert weights[0] == weights[1] == (1.0, 1.0)  # steps 1-4: windows 0 and 1
  for fr, de in weights[2:]:
    assert abs(fr + de - 2.0) < 1e-5 and fr != de, (fr, de)  # K softmax(r / T) sums to K
  # Resuming this run with another weighting is a clear error, not a lost checkpoint.
  with pytest.raises(ValueError, match=r"trained with task_weighting='dwa' over 2 tasks"):
    _train(str(tmp_path), "LossConfig.task_weighting='fixed'", "TrainConfig.num_steps=10")
  assert checkpoint.latest_step(str(tmp_path)) == 8


def test_uncertainty_run_logs_weights_and_log_variances(tmp_path, gin_cleared_after):
  records = _train(str(tmp_path), "LossConfig.task_weighting='uncertainty'",
                   "LossConfig.normalization='per_task'")
  last = records[-1]
  for task in ("multi30k_en_fr", "multi30k_en_de"):
    # Both losses are far above 1 early on, so both s_t grow and the weights fall.
    assert last[f"tasks/{task}/log_var"] > 0
    assert 0 < last[f"tasks/{task}/weight"] < 1
    assert records[0][f"tasks/{task}/log_var"] < last[f"tasks/{task}/log_var"]


def test_uncertainty_needs_per_task_normalization():
  with pytest.raises(ValueError, match=r"needs normalization='per_task' \(got 'tokens'\)"):
    losses.LossConfig(task_weighting="uncertainty")
  with pytest.raises(ValueError, match=r"task_weighting='gradnorm' is not one of"):
    losses.LossConfig(task_weighting="gradnorm")
