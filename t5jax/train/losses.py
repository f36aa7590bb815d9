"""Cross-entropy with z-loss and label smoothing, per-task weighted and reported.

The multi-task loss is L = sum_t w_t L_t. Every target token gets a scale
c = w_task(token) / normaliser, computed once from the whole (global) batch, so
that the loss is a plain sum of c * token_loss: additive over microbatches, and
the per-task contributions add up to the total exactly. The weights w_t are fixed
or dynamic (LossConfig.task_weighting; t5jax/train/task_weighting.py computes them in the
step).
"""

from __future__ import annotations

import dataclasses

import gin
import jax
import jax.numpy as jnp

NORMALIZATIONS = ("tokens", "per_task")
TASK_WEIGHTINGS = ("fixed", "uncertainty", "dwa")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LossConfig:
  """How token losses become the training loss.

  Attributes:
    z_loss: coefficient of log(Z)^2, which keeps the softmax normaliser near 1
      (T5 uses 1e-4).
    label_smoothing: probability mass spread uniformly over the vocabulary.
    normalization: "tokens" divides the weighted sum by the number of real target
      tokens in the batch (T5's choice: tasks count by their tokens); "per_task"
      averages each task over its own tokens first, so L = sum_t w_t mean_t.
      A number divides by that constant instead (loss per fixed token budget).
    task_weights: {task name: w_t}; tasks not named weigh 1.0.
    task_weighting: "fixed" uses task_weights as they are. "uncertainty" learns a
      log-variance s_t per task (Kendall et al. 2018): L = sum_t (exp(-s_t) w_t L_t
      + s_t) over the tasks in the batch, with L_t the task's mean token loss (so
      it needs normalization="per_task"). "dwa" is Dynamic Weight Averaging (Liu et
      al. 2019): w_t times K softmax_t(r_t / dwa_temperature), r_t the ratio of
      the task's mean loss over the last two windows of dwa_window steps.
      See t5jax/train/task_weighting.py.
    uncertainty_learning_rate: Adam learning rate of the log-variances s_t
      (their own optimizer; the model's optimizer never sees them).
    dwa_window: steps per DWA window (the paper's "epoch"); the weights are 1 for
      the first two windows and change once per window after that.
    dwa_temperature: DWA's softmax temperature; larger is closer to equal weights
      (2.0 as in the paper).
    soft_sharing_l2: lambda of the soft parameter sharing penalty
      lambda * sum_t ||theta_t - theta_shared||^2 over the task copies of the
      modules in T5Config.task_specific (0: the copies train independently).
    fused_cross_entropy: compute the output projection and the loss together in
      blocks of target positions (t5jax/train/fused_xent.py), never holding the
      [batch, length, vocab] fp32 logits or their gradient. Same loss and
      gradients; less memory, and faster on CPU
      (docs/performance/fused-cross-entropy.md).
    fused_block_tokens: target tokens per block and device of the fused
      cross-entropy (rows of the device's batch shard x target positions); a
      block's logits are this x vocab (/ tensor shards) fp32.
  """
  z_loss: float = 1e-4
  label_smoothing: float = 0.0
  normalization: str | float = "tokens"
  task_weights: dict = dataclasses.field(default_factory=dict)
  task_weighting: str = "fixed"
  uncertainty_learning_rate: float = 1e-2
  dwa_window: int = 100
  dwa_temperature: float = 2.0
  soft_sharing_l2: float = 0.0
  fused_cross_entropy: bool = True
  fused_block_tokens: int = 256

  def __post_init__(self):
    if self.fused_block_tokens < 1:
      raise ValueError(
          f"LossConfig.fused_block_tokens must be >= 1, got {self.fused_block_tokens}.")
    if self.soft_sharing_l2 < 0:
      raise ValueError(f"LossConfig.soft_sharing_l2 must be >= 0, got {self.soft_sharing_l2}.")
    if isinstance(self.normalization, str) and self.normalization not in NORMALIZATIONS:
      raise ValueError(
          f"LossConfig.normalization={self.normalization!r} is not one of {NORMALIZATIONS} "
          "or a positive number.")
    if not isinstance(self.normalization, str) and self.normalization <= 0:
      raise ValueError(f"LossConfig.normalization must be positive, got {self.normalization}.")
    if not 0.0 <= self.label_smoothing < 1.0:
      raise ValueError(f"LossConfig.label_smoothing must be in [0, 1), got {self.label_smoothing}.")
    if self.z_loss < 0:
      raise ValueError(f"LossConfig.z_loss must be >= 0, got {self.z_loss}.")
    if self.task_weighting not in TASK_WEIGHTINGS:
      raise ValueError(
          f"LossConfig.task_weighting={self.task_weighting!r} is not one of {TASK_WEIGHTINGS}.")
    if self.task_weighting == "uncertainty" and self.normalization != "per_task":
      raise ValueError(
          "LossConfig.task_weighting='uncertainty' weighs each task's mean token loss, so it "
          f"needs normalization='per_task' (got {self.normalization!r}); add "
          "--gin.LossConfig.normalization=\"'per_task'\".")
    if self.uncertainty_learning_rate <= 0:
      raise ValueError("LossConfig.uncertainty_learning_rate must be positive, got "
                       f"{self.uncertainty_learning_rate}.")
    if self.dwa_window < 1 or self.dwa_temperature <= 0:
      raise ValueError(
          f"LossConfig.dwa_window must be >= 1 and dwa_temperature > 0, got "
          f"{self.dwa_window} and {self.dwa_temperature}.")

  def weights_vector(self, task_names: list[str]) -> jnp.ndarray:
    """Per-task weights [num_tasks] in task-id order; rejects names not in the run."""
    unknown = set(self.task_weights) - set(task_names)
    if unknown:
      raise ValueError(
          f"LossConfig.task_weights names {sorted(unknown)}, which are not tasks of this "
          f"run; the run's tasks are {task_names}.")
    return jnp.asarray([float(self.task_weights.get(t, 1.0)) for t in task_names],
                       jnp.float32)


def token_terms(logits_btv, targets_bt, z_loss: float, label_smoothing: float):
  """Per-token loss terms, all [B, T] fp32: (loss, z-loss part, correct, log Z).

  loss is cross-entropy + z-loss. With label smoothing the constant entropy of
  the smoothed target is subtracted, so a perfect prediction still has loss 0
  (as in T5). correct is 1.0 where the target has the highest logit (without
  argmax, which is slow on XLA:CPU). fused_xent.py calls this on blocks of tokens.
  """
  logits_btv = logits_btv.astype(jnp.float32)
  vocab = logits_btv.shape[-1]
  log_z_bt = jax.nn.logsumexp(logits_btv, axis=-1)
  target_logit_bt = jnp.take_along_axis(logits_btv, targets_bt[..., None], axis=-1)[..., 0]
  if label_smoothing > 0:
    # q = `confidence` on the target and `low` on every other piece:
    # -sum_v q_v log p_v = log Z - (confidence - low) logit_target - low sum_v logit_v.
    confidence, low = smoothed_target(label_smoothing, vocab)
    sum_logits_bt = jnp.sum(logits_btv, axis=-1)
    nll_bt = log_z_bt - (confidence - low) * target_logit_bt - low * sum_logits_bt
    min_entropy = -(confidence * jnp.log(confidence) + (vocab - 1) * low * jnp.log(low))
    nll_bt = nll_bt - min_entropy
  else:
    nll_bt = log_z_bt - target_logit_bt
  z_bt = z_loss * jnp.square(log_z_bt)
  correct_bt = (target_logit_bt >= jnp.max(logits_btv, axis=-1)).astype(jnp.float32)
  return nll_bt + z_bt, z_bt, correct_bt, log_z_bt


def smoothed_target(label_smoothing: float, vocab: int) -> tuple[float, float]:
  """(probability of the target, of each other piece) of the smoothed target."""
  return 1.0 - label_smoothing, label_smoothing / (vocab - 1)


def token_losses(logits_btv, targets_bt, z_loss: float, label_smoothing: float):
  """Per-token cross-entropy (+ z-loss) and the z-loss part alone, both [B, T] fp32."""
  loss_bt, z_bt, _, _ = token_terms(logits_btv, targets_bt, z_loss, label_smoothing)
  return loss_bt, z_bt


def token_scales(loss_weights_bt, task_ids_bt, task_weights_k, normalization):
  """The factor c each token's loss is multiplied by, from the whole batch [B, T]."""
  w_bt = loss_weights_bt.astype(jnp.float32) * jnp.take(task_weights_k, task_ids_bt, axis=0)
  if normalization == "tokens":
    return w_bt / jnp.maximum(jnp.sum(loss_weights_bt.astype(jnp.float32)), 1.0)
  if normalization == "per_task":
    onehot_btk = jax.nn.one_hot(task_ids_bt, task_weights_k.shape[0], dtype=jnp.float32)
    tokens_k = jnp.einsum("BT,BTK->K", loss_weights_bt.astype(jnp.float32), onehot_btk)
    return w_bt / jnp.maximum(tokens_k, 1.0)[task_ids_bt]
  return w_bt / float(normalization)


def loss_and_stats(logits_btv, batch, scale_bt, num_tasks: int, cfg: LossConfig):
  """Returns (loss, stats) for one (micro)batch from its logits [B, T, V].

  stats holds sums, to be added over microbatches and divided on the host:
  per task (arrays [K]): token count, summed token loss, correct tokens, and the
  task's contribution to the loss (these add up to `loss`).
  """
  loss_bt, z_bt, correct_bt, _ = token_terms(
      logits_btv, batch["decoder_target_tokens"], cfg.z_loss, cfg.label_smoothing)
  return jnp.sum(loss_bt * scale_bt), per_task_stats(loss_bt, z_bt, correct_bt, batch,
                                                     scale_bt, num_tasks)


def per_task_stats(loss_bt, z_bt, correct_bt, batch, scale_bt, num_tasks: int) -> dict:
  """loss_and_stats's stats from the per-token terms [B, T] (see token_terms)."""
  weights_bt = batch["decoder_loss_weights"].astype(jnp.float32)
  task_ids_bt = batch["decoder_task_ids"]
  onehot_btk = jax.nn.one_hot(task_ids_bt, num_tasks, dtype=jnp.float32) * weights_bt[..., None]
  per_task = lambda x_bt: jnp.einsum("BT,BTK->K", x_bt, onehot_btk)
  return {
      "tokens_k": per_task(jnp.ones_like(weights_bt)),
      "loss_sum_k": per_task(loss_bt),
      "z_loss_sum_k": per_task(z_bt),
      "correct_k": per_task(correct_bt),
      "contribution_k": jnp.einsum("BT,BTK->K", loss_bt * scale_bt,
                                   jax.nn.one_hot(task_ids_bt, num_tasks, dtype=jnp.float32)),
  }
