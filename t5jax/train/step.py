"""The training state, created already sharded, and the pure training step."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec

from t5jax.train import fused_xent, losses, task_weighting
from t5jax.parallel import partitioning
from t5jax.model import param_tree, task_params, trainable

Batch = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class StepSettings:
  """What the step closes over besides the state and the batch. A run's are built in one
  place (step_builder.build); a new step setting is a field here and its use below.

  Attributes:
    model: the Transformer.
    loss_cfg: z-loss, label smoothing, normalisation, fused cross-entropy, task weighting.
    task_weights_k: LossConfig.task_weights as a [num_tasks] vector; dynamic task
      weighting (loss_cfg.task_weighting) multiplies it by factors computed in the step.
    tx: the optimizer (None where only loss_and_grads runs).
    schedule: the learning rate of a step, reported as a metric (None: as for `tx`).
    microbatches: gradient accumulation: the batch runs as this many slices.
    unroll_microbatches: accumulate in straight-line code instead of a loop.
    slot_of_task_k: task_slot_table(...), for models with per-task parameters.
    trainable_pattern: OptimizerConfig.trainable: only the parameters it matches are
      differentiated (a frozen base's weight gradients are never computed); the
      others' gradients are zeros, which the optimizer discards.
  """
  model: nn.Module
  loss_cfg: losses.LossConfig
  task_weights_k: jax.Array
  tx: optax.GradientTransformation | None = None
  schedule: Callable | None = None
  microbatches: int = 1
  unroll_microbatches: bool = False
  slot_of_task_k: jax.Array | None = None
  trainable_pattern: str = ""


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes. `rng` is raw key data; each step folds
  its step number in, so dropout does not depend on how the run was resumed.
  `task_state` is what dynamic task weighting carries between steps ({} for
  fixed weights; see t5jax/train/task_weighting.py)."""
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  task_state: Any


def param_shardings(model: nn.Module, mesh, inputs_length=8, targets_length=8):
  boxed = param_tree.abstract_boxed_params(model, inputs_length, targets_length)
  return partitioning.logical_to_sharding(nn.get_partition_spec(boxed), mesh)


def state_shardings(model, tx, mesh, inputs_length=8, targets_length=8, task_state=None):
  """NamedShardings for every leaf of the TrainState (parameters by the rules
  table, optimizer state like the parameters it shadows, counters and the task
  state replicated)."""
  boxed = param_tree.abstract_boxed_params(model, inputs_length, targets_length)
  p_shard = partitioning.logical_to_sharding(nn.get_partition_spec(boxed), mesh)
  abstract = param_tree.strip_boxes(boxed)
  abstract_opt = jax.eval_shape(tx.init, abstract)
  o_shard = partitioning.opt_state_shardings(abstract_opt, abstract, p_shard, mesh)
  rep = partitioning.replicated(mesh)
  return TrainState(step=rep, params=p_shard, opt_state=o_shard, rng=rep,
                    task_state=jax.tree.map(lambda _: rep, task_state or {}))


def make_init_fn(model, tx, inputs_length=8, targets_length=8, task_state=None):
  """key -> fresh TrainState (parameters, optimizer state, step 0, RNG, and
  `task_state`: task_weighting.init_state(...), or None for fixed weights)."""
  def init(key):
    enc, dec = param_tree.dummy_inputs(inputs_length, targets_length)
    params_key, rng_key = jax.random.split(key)
    # Task copies (soft sharing) start equal to their shared anchors.
    params = task_params.init_copies_from_shared(
        nn.meta.unbox(model.init(params_key, enc, dec)["params"]))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=tx.init(params), rng=jax.random.key_data(rng_key),
                      task_state=jax.tree.map(jnp.asarray, task_state or {}))

  return init


def abstract_train_state(model, tx, inputs_length=8, targets_length=8, task_state=None):
  """The TrainState's shapes and dtypes, without allocating it."""
  # The key as a shape: a concrete one would need a device of the mesh in effect.
  return jax.eval_shape(make_init_fn(model, tx, inputs_length, targets_length, task_state),
                        jax.eval_shape(lambda: jax.random.key(0)))


def create_train_state(model, tx, mesh, seed: int, inputs_length=8, targets_length=8,
                       task_state=None):
  """Initialises parameters and optimizer state directly into their shardings
  (no host copy of the full model ever exists). Returns (state, shardings)."""
  shardings = state_shardings(model, tx, mesh, inputs_length, targets_length, task_state)
  init = make_init_fn(model, tx, inputs_length, targets_length, task_state)
  state = jax.jit(init, out_shardings=shardings)(jax.random.key(seed))
  return state, shardings


def _split_microbatches(tree, microbatches: int):
  """[B, ...] -> [M, B/M, ...] taking rows m, m+M, ... for microbatch m, so each
  device keeps its own rows in every microbatch (no resharding)."""
  def split(x):
    x = x.reshape((x.shape[0] // microbatches, microbatches) + x.shape[1:]).swapaxes(0, 1)
    spec = PartitionSpec(None, partitioning.BATCH_MESH_AXES)
    return jax.lax.with_sharding_constraint(x, spec)
  return jax.tree.map(split, tree)


def task_slot_table(model: nn.Module, task_names: list[str]) -> jax.Array | None:
  """[num_tasks] slot index of each of the run's tasks (None: no task slots)."""
  cfg = model.config
  if not cfg.has_task_parameters:
    return None
  return jnp.asarray([cfg.slot_of_task(t) for t in task_names], jnp.int32)


def _task_slots(batch: Batch, slot_of_task_k) -> dict:
  if slot_of_task_k is None:
    return {}
  return {"encoder_task_slots": slot_of_task_k[batch["encoder_task_ids"]],
          "decoder_task_slots": slot_of_task_k[batch["decoder_task_ids"]]}


def loss_and_grads(params, batch: Batch, key, settings: StepSettings):
  """The weighted loss, its per-task sums and the gradients, over microbatches.

  Returns:
    (loss, stats, grads): stats are per-task sums `*_k` [num_tasks].
  """
  if settings.trainable_pattern:
    trained, frozen = trainable.parts(params, settings.trainable_pattern)
    loss, stats, grads = loss_and_grads(trained, batch, key, dataclasses.replace(
        settings, model=_WithFrozen(settings.model, frozen), trainable_pattern=""))
    return loss, stats, trainable.union(grads, jax.tree.map(jnp.zeros_like, frozen))
  model, loss_cfg, microbatches = settings.model, settings.loss_cfg, settings.microbatches
  num_tasks = settings.task_weights_k.shape[0]
  scale_bt = losses.token_scales(batch["decoder_loss_weights"], batch["decoder_task_ids"],
                                 settings.task_weights_k, loss_cfg.normalization)

  def loss_fn(params, micro, micro_scale_bt, key):
    outputs = model.apply(
        {"params": params}, micro["encoder_input_tokens"], micro["decoder_input_tokens"],
        micro["encoder_segment_ids"], micro["decoder_segment_ids"], enable_dropout=True,
        rngs={"dropout": key}, return_hidden=loss_cfg.fused_cross_entropy,
        **_task_slots(micro, settings.slot_of_task_k))
    if loss_cfg.fused_cross_entropy:  # outputs: (hidden_btd, kernel, layout)
      return fused_xent.fused_loss_and_stats(*outputs, micro, micro_scale_bt, num_tasks,
                                             loss_cfg)
    return losses.loss_and_stats(outputs, micro, micro_scale_bt, num_tasks, loss_cfg)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if microbatches == 1:
    (loss, stats), grads = grad_fn(params, batch, scale_bt, key)
    return loss, stats, grads

  micro_batches, micro_scales = _split_microbatches((batch, scale_bt), microbatches)

  def accumulate(carry, xs):
    micro, micro_scale, index = xs
    (loss_m, stats_m), grads_m = grad_fn(params, micro, micro_scale,
                                         jax.random.fold_in(key, index))
    return jax.tree.map(jnp.add, carry, (loss_m, stats_m, grads_m)), None

  zeros_like = lambda t: jax.tree.map(jnp.zeros_like, t)
  first = jax.tree.map(lambda x: x[0], (micro_batches, micro_scales))
  stats_shape = jax.eval_shape(lambda: grad_fn(params, *first, key)[0][1])
  init = (jnp.zeros((), jnp.float32), zeros_like(stats_shape), zeros_like(params))
  (loss, stats, grads), _ = jax.lax.scan(
      accumulate, init, (micro_batches, micro_scales, jnp.arange(microbatches)),
      unroll=settings.unroll_microbatches)
  return loss, stats, grads


class _WithFrozen:
  """`model` whose apply() takes the trained parameters and adds the frozen ones."""

  def __init__(self, model: nn.Module, frozen):
    self.model, self.frozen, self.config = model, frozen, model.config

  def apply(self, variables, *args, **kwargs):
    params = trainable.union(variables["params"], self.frozen)
    return self.model.apply({**variables, "params": params}, *args, **kwargs)


def train_step(state: TrainState, batch: Batch,
               settings: StepSettings) -> tuple[TrainState, dict]:
  """One optimizer update on a global batch. Pure: jit it with shardings.

  With task-specific copies (T5Config.task_specific) the soft-sharing penalty
  loss_cfg.soft_sharing_l2 * sum_t ||theta_t - theta_shared||^2 joins the loss (reported as
  `soft_sharing_penalty`).

  Returns:
    (new state, metrics): scalar metrics plus per-task sums `*_k` [num_tasks]
    (and, with dynamic weighting, the weights in use `task_weight_k`).
  """
  model, loss_cfg, task_weights_k = settings.model, settings.loss_cfg, settings.task_weights_k
  step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  weights_k = task_weighting.weights_in_use(loss_cfg, state.task_state, state.step,
                                            task_weights_k)
  loss, stats, grads = loss_and_grads(
      state.params, batch, step_key, dataclasses.replace(settings, task_weights_k=weights_k))
  sharing_metrics = {}
  if model.config.task_specific:
    distance, distance_grads = jax.value_and_grad(task_params.soft_sharing_penalty)(
        state.params)
    if loss_cfg.soft_sharing_l2:
      loss = loss + loss_cfg.soft_sharing_l2 * distance
      grads = jax.tree.map(lambda g, d: g + loss_cfg.soft_sharing_l2 * d, grads,
                           distance_grads)
    sharing_metrics = {"soft_sharing_distance": distance,
                       "soft_sharing_penalty": loss_cfg.soft_sharing_l2 * distance}
  task_state, penalty_k, weighting_metrics = task_weighting.update(
      loss_cfg, state.task_state, state.step, stats, task_weights_k)
  # Under uncertainty weighting the loss also holds sum_t s_t; each s_t joins its
  # task's contribution, so the contributions still add up to the loss.
  loss = loss + jnp.sum(penalty_k)
  stats = {**stats, "contribution_k": stats["contribution_k"] + penalty_k}
  if loss_cfg.task_weighting != "fixed":
    weighting_metrics["task_weight_k"] = weights_k
  updates, opt_state = settings.tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  tokens = jnp.sum(stats["tokens_k"])
  metrics = {
      "loss": loss,
      "cross_entropy": jnp.sum(stats["loss_sum_k"] - stats["z_loss_sum_k"]) / jnp.maximum(tokens, 1),
      "z_loss": jnp.sum(stats["z_loss_sum_k"]) / jnp.maximum(tokens, 1),
      "accuracy": jnp.sum(stats["correct_k"]) / jnp.maximum(tokens, 1),
      "grad_norm": optax.tree.norm(grads),
      "param_norm": optax.tree.norm(state.params),
      "learning_rate": settings.schedule(state.step),
      "target_tokens": tokens,
      **stats,
      **weighting_metrics,
      **sharing_metrics,
  }
  new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                            task_state=task_state)
  return new_state, metrics


def jit_train_step(mesh, shardings: TrainState, settings: StepSettings):
  """train_step jitted with explicit shardings, the state donated."""
  step = functools.partial(train_step, settings=settings)
  return jax.jit(step, in_shardings=(shardings, partitioning.batch_sharding(mesh)),
                 out_shardings=(shardings, partitioning.replicated(mesh)),
                 donate_argnums=(0,))
