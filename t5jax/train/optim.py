"""Optimisers and learning-rate schedules: Adafactor as T5 trains, and AdamW."""

from __future__ import annotations

import dataclasses
import re

import gin
import jax
import jax.numpy as jnp
import optax

from t5jax.model import trainable
from t5jax.train import adafactor

OPTIMIZERS = ("adafactor", "adamw")
DECAYS = ("rsqrt", "constant", "linear", "cosine")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """Optimiser and schedule.

  The schedule has three phases: linear warm-up from 0 for `warmup_steps`, a
  constant `learning_rate` until `decay_start`, then `decay`. T5 pretraining is
  learning_rate=0.01, decay_start=10_000, decay="rsqrt" (lr = 1/sqrt(step) from
  step 10k on); T5 fine-tuning is a constant 1e-3.

  Attributes:
    name: "adafactor" (factored second moments, update clipping, parameter-scale
      relative steps, no momentum: T5's settings) or "adamw".
    learning_rate: peak learning rate.
    warmup_steps: linear warm-up length (0: none).
    decay_start: first step of the decay phase.
    decay: "rsqrt", "constant", "linear" or "cosine" (the last two reach
      `end_learning_rate` at `total_steps`).
    total_steps: end of linear/cosine decay.
    end_learning_rate: learning rate at total_steps for linear/cosine.
    weight_decay: decoupled weight decay (AdamW; Adafactor's is relative).
    clip_grad_norm: clip gradients to this global norm before the update (0: off).
    b1, b2, eps: AdamW moments.
    adafactor_decay_rate: Adafactor's second-moment decay exponent (T5: 0.8).
    trainable: a regular expression over parameter paths ("decoder/layers_0/mlp/wi");
      only the parameters it matches (re.search) are updated, the others stay
      frozen and get no optimizer state (nor a gradient). Empty: all train, except
      for a model with LoRA or a prompt, whose PEFT parameters alone train
      (trainable.effective_pattern). E.g. "adapter_task" trains the task adapters
      on a frozen backbone.
  """
  name: str = "adafactor"
  learning_rate: float = 0.01
  warmup_steps: int = 0
  decay_start: int = 10_000
  decay: str = "rsqrt"
  total_steps: int = 100_000
  end_learning_rate: float = 0.0
  weight_decay: float = 0.0
  clip_grad_norm: float = 1.0
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  adafactor_decay_rate: float = 0.8
  trainable: str = ""

  def __post_init__(self):
    try:
      re.compile(self.trainable)
    except re.error as e:
      raise ValueError(f"OptimizerConfig.trainable={self.trainable!r} is not a valid regular "
                       f"expression: {e}.") from None
    if self.name not in OPTIMIZERS:
      raise ValueError(f"OptimizerConfig.name={self.name!r} is not one of {OPTIMIZERS}.")
    if self.decay not in DECAYS:
      raise ValueError(f"OptimizerConfig.decay={self.decay!r} is not one of {DECAYS}.")
    if self.learning_rate <= 0:
      raise ValueError(f"OptimizerConfig.learning_rate must be positive, got {self.learning_rate}.")
    if self.warmup_steps < 0 or self.decay_start < 0:
      raise ValueError("OptimizerConfig.warmup_steps and decay_start must be >= 0.")
    if self.decay in ("linear", "cosine") and self.total_steps <= self.decay_start:
      raise ValueError(
          f"OptimizerConfig.total_steps={self.total_steps} must exceed decay_start="
          f"{self.decay_start} for decay={self.decay!r}.")


def learning_rate_schedule(cfg: OptimizerConfig) -> optax.Schedule:
  """Warm-up, constant, then decay; a pure function of the step."""

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = jnp.minimum(1.0, (step + 1.0) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    start = float(max(cfg.decay_start, 1))
    past = jnp.maximum(step, start)
    if cfg.decay == "rsqrt":
      factor = jnp.sqrt(start / past)
    elif cfg.decay == "constant":
      factor = 1.0
    else:
      frac = jnp.clip((past - start) / (cfg.total_steps - start), 0.0, 1.0)
      shape = 1.0 - frac if cfg.decay == "linear" else 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
      end = cfg.end_learning_rate / cfg.learning_rate
      factor = end + (1.0 - end) * shape
    return cfg.learning_rate * warm * factor

  return schedule


def make_optimizer(cfg: OptimizerConfig) -> optax.GradientTransformation:
  """The optimiser, with global-norm clipping first and the schedule injected."""
  schedule = learning_rate_schedule(cfg)
  if cfg.name == "adafactor":
    # optax's Adafactor arithmetic and state, computed in two passes per parameter.
    core = adafactor.adafactor(schedule, decay_rate=cfg.adafactor_decay_rate,
                               clip_global_norm=cfg.clip_grad_norm,
                               weight_decay_rate=cfg.weight_decay)
  else:
    core = optax.adamw(learning_rate=schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                       weight_decay=cfg.weight_decay)
    if cfg.clip_grad_norm:
      core = optax.chain(optax.clip_by_global_norm(cfg.clip_grad_norm), core)
  if not cfg.trainable:
    return core

  def labels(params):
    return jax.tree.map(lambda t: "train" if t else "frozen",
                        trainable.mask(params, cfg.trainable))
  return optax.multi_transform({"train": core, "frozen": optax.set_to_zero()}, labels)
