"""The train step assembled in one place: from a TrainConfig, this run's model, optimizer,
state shapes and shardings and the jitted step. The loop runs it, `t5jax compile` lowers it
for a target's devices, `--fit` counts its parameters (as MaxText's train_compile.py reuses
train.py's step), so a new step setting is one field of step.StepSettings, set here."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from jax.sharding import Mesh

from t5jax.train import optim, run_config, run_vocabulary, step as train_step, task_weighting
from t5jax.parallel import partitioning
from t5jax.data import pipeline
from t5jax.model import t5, trainable


def build_model(config: run_config.TrainConfig, vocabulary=None) -> t5.Transformer:
  """The model; with the run's `vocabulary`, checked to have a row for each of its ids."""
  cfg = config.model_config()
  if vocabulary is not None:
    run_vocabulary.check_model(vocabulary, cfg.vocab_size, config.model)
  return t5.Transformer(cfg)


def optimizer_config(config: run_config.TrainConfig,
                     model: t5.Transformer) -> optim.OptimizerConfig:
  """The run's optimizer settings, with the parameters that train resolved
  (a LoRA or prompt model trains only those unless OptimizerConfig.trainable says)."""
  pattern = trainable.effective_pattern(config.optimizer.trainable, model.config)
  return dataclasses.replace(config.optimizer, trainable=pattern)


@dataclasses.dataclass(frozen=True)
class TrainSetup:
  """A run's train step, assembled (build).

  Attributes:
    config: the run.
    mesh: the devices the step runs on.
    optimizer: the run's OptimizerConfig with `trainable` resolved (optimizer_config).
    task_names: the run's tasks; task id i is element i.
    settings: what the step closes over: the model, the optimizer, the loss, ...
    shardings: the TrainState's NamedShardings.
    abstract: the TrainState's shapes and dtypes (nothing allocated, no shardings).
  """
  config: run_config.TrainConfig
  mesh: Mesh
  optimizer: optim.OptimizerConfig
  task_names: list[str]
  settings: train_step.StepSettings
  shardings: train_step.TrainState
  abstract: train_step.TrainState

  @property
  def model(self) -> t5.Transformer:
    return self.settings.model

  @property
  def lengths(self) -> tuple[int, int]:
    return self.config.data.inputs_length, self.config.data.targets_length

  def jit_step(self):
    """The train step jitted on the mesh: (state, batch) -> (state, metrics)."""
    return train_step.jit_train_step(self.mesh, self.shardings, self.settings)

  def create_state(self) -> train_step.TrainState:
    """A fresh state (TrainConfig.seed), created in its shards on the mesh."""
    task_state = task_weighting.init_state(self.config.loss, len(self.task_names))
    state, _ = train_step.create_train_state(self.model, self.settings.tx, self.mesh,
                                             self.config.seed, *self.lengths, task_state)
    return state


def build(config: run_config.TrainConfig, devices=None, vocabulary=None) -> TrainSetup:
  """Assembles `config`'s train step on `devices` (default: this host's), abstractly: no
  array is placed on them, so `t5jax compile` may pass a target's devices.

  Args:
    vocabulary: the run's; its ids are checked to fit the model's vocabulary.
  """
  mesh = partitioning.make_mesh(config.mesh, devices)
  partitioning.check_batch_size(config.batch_size, mesh, config.microbatches)
  task_names = pipeline.task_names(config.data.mixture_or_task)
  model = build_model(config, vocabulary)
  opt_cfg = optimizer_config(config, model)
  tx = optim.make_optimizer(opt_cfg)
  settings = train_step.StepSettings(
      model=model, loss_cfg=config.loss, task_weights_k=config.loss.weights_vector(task_names),
      tx=tx, schedule=optim.learning_rate_schedule(config.optimizer),
      microbatches=config.microbatches, unroll_microbatches=config.unroll_microbatches,
      slot_of_task_k=train_step.task_slot_table(model, task_names),
      trainable_pattern=opt_cfg.trainable)
  lengths = (config.data.inputs_length, config.data.targets_length)
  # Host zeros in the task state's shapes, which is all shardings and shapes read: a jax
  # array would need a device to live on, and a target's need not be here.
  task_state = jax.tree.map(
      lambda s: np.zeros(s.shape, s.dtype),
      jax.eval_shape(lambda: task_weighting.init_state(config.loss, len(task_names))))
  with partitioning.sharding_context(mesh):
    shardings = train_step.state_shardings(model, tx, mesh, *lengths, task_state)
    abstract = train_step.abstract_train_state(model, tx, *lengths, task_state)
  return TrainSetup(config=config, mesh=mesh, optimizer=opt_cfg, task_names=task_names,
                    settings=settings, shardings=shardings, abstract=abstract)
