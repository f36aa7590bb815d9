"""Dynamic task weights, beside the fixed ones: learned uncertainty and DWA.

`LossConfig.task_weighting` picks one:
  fixed        w_t = task_weights[t].
  uncertainty  Kendall, Gal & Cipolla 2018: a learned log-variance s_t per task,
               L = sum_{t in batch} (exp(-s_t) w_t L_t + s_t), L_t the task's mean
               token loss; the weight in use is w_t exp(-s_t).
  dwa          Liu, Johns & Davison 2019: w_t K exp(r_t / T) / sum_j exp(r_j / T),
               r_t = Lbar_t(k-1) / Lbar_t(k-2), Lbar_t(k) the task's mean token loss
               over window k of `dwa_window` steps; 1 in the first two windows.

What they need between steps lives in `TrainState.task_state`, a small
replicated pytree that the pure step reads and writes and the checkpoint saves.
The weights in use go through the same per-token scales as fixed weights
(losses.token_scales), so the per-task contributions still add up to the loss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from t5jax.train.losses import LossConfig


def init_state(cfg: LossConfig, num_tasks: int) -> dict:
  """The task state of a fresh run: {} for fixed weights; s_t = 0 and a fresh Adam
  for uncertainty; empty windows for DWA."""
  zeros_k = jnp.zeros((num_tasks,), jnp.float32)
  if cfg.task_weighting == "uncertainty":
    return {"log_var_k": zeros_k, "opt_state": _log_var_optimizer(cfg).init(zeros_k)}
  if cfg.task_weighting == "dwa":
    return {"window_loss_sum_k": zeros_k, "window_tokens_k": zeros_k,
            "last_mean_k": zeros_k, "prev_mean_k": zeros_k}
  return {}


def _log_var_optimizer(cfg: LossConfig) -> optax.GradientTransformation:
  return optax.adam(cfg.uncertainty_learning_rate)


def weights_in_use(cfg: LossConfig, task_state: dict, step, task_weights_k):
  """The weights [K] this step's token scales use: task_weights times the dynamic factor."""
  if cfg.task_weighting == "uncertainty":
    return task_weights_k * jnp.exp(-task_state["log_var_k"])
  if cfg.task_weighting == "dwa":
    return task_weights_k * dwa_factors(task_state["last_mean_k"], task_state["prev_mean_k"],
                                        step // cfg.dwa_window, cfg.dwa_temperature)
  return task_weights_k


def dwa_factors(last_mean_k, prev_mean_k, window, temperature: float):
  """K softmax(r / T) with r = last / prev, or ones in the first two windows.

  Args:
    last_mean_k, prev_mean_k: each task's mean loss over windows k-1 and k-2
      (0 for a task not seen yet, whose ratio is then 1).
    window: k, the index of the current window (step // dwa_window).
  """
  seen_k = prev_mean_k > 0
  ratio_k = jnp.where(seen_k, last_mean_k / jnp.where(seen_k, prev_mean_k, 1.0), 1.0)
  factors_k = ratio_k.shape[0] * jax.nn.softmax(ratio_k / temperature)
  return jnp.where(window >= 2, factors_k, jnp.ones_like(factors_k))


def uncertainty_objective(log_var_k, mean_loss_k, present_k, task_weights_k):
  """sum over the tasks present of exp(-s_t) w_t L_t + s_t (a scalar)."""
  term_k = jnp.exp(-log_var_k) * task_weights_k * mean_loss_k + log_var_k
  return jnp.sum(jnp.where(present_k, term_k, 0.0))


def update(cfg: LossConfig, task_state: dict, step, stats: dict, task_weights_k):
  """Advances the task state by one step, from the step's per-task sums.

  Args:
    stats: the step's `tokens_k` and `loss_sum_k` (summed over microbatches).

  Returns:
    (new task state, penalty_k, metrics): penalty_k [K] is what the loss has
    besides its token terms (s_t for each task present under uncertainty,
    else 0); metrics are [K] arrays to report.
  """
  present_k = stats["tokens_k"] > 0
  mean_loss_k = stats["loss_sum_k"] / jnp.maximum(stats["tokens_k"], 1.0)
  zeros_k = jnp.zeros_like(task_weights_k)
  if cfg.task_weighting == "uncertainty":
    log_var_k = task_state["log_var_k"]
    # The model's gradients already carry exp(-s_t) through the token scales; s_t's
    # own gradient, -exp(-s_t) w_t L_t + 1, needs only the per-task means.
    grad_k = jax.grad(uncertainty_objective)(log_var_k, mean_loss_k, present_k,
                                             task_weights_k)
    updates_k, opt_state = _log_var_optimizer(cfg).update(grad_k, task_state["opt_state"])
    new_state = {"log_var_k": optax.apply_updates(log_var_k, updates_k), "opt_state": opt_state}
    return new_state, jnp.where(present_k, log_var_k, 0.0), {"log_var_k": log_var_k}
  if cfg.task_weighting == "dwa":
    loss_sum_k = task_state["window_loss_sum_k"] + stats["loss_sum_k"]
    tokens_k = task_state["window_tokens_k"] + stats["tokens_k"]
    closes = (step + 1) % cfg.dwa_window == 0
    # A task absent for a whole window keeps its last mean: no news, ratio 1.
    mean_k = jnp.where(tokens_k > 0, loss_sum_k / jnp.maximum(tokens_k, 1.0),
                       task_state["last_mean_k"])
    new_state = {
        "window_loss_sum_k": jnp.where(closes, zeros_k, loss_sum_k),
        "window_tokens_k": jnp.where(closes, zeros_k, tokens_k),
        "last_mean_k": jnp.where(closes, mean_k, task_state["last_mean_k"]),
        "prev_mean_k": jnp.where(closes, task_state["last_mean_k"], task_state["prev_mean_k"]),
    }
    return new_state, zeros_k, {}
  return task_state, zeros_k, {}
