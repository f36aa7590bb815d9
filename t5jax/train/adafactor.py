"""T5's Adafactor with optax's arithmetic and optax's state, in two passes per parameter.

`optax.chain(clip_by_global_norm, optax.adafactor(...))` is five transformations,
each a `tree.map` whose result feeds the next; XLA keeps about three fp32 copies of
each parameter alive between them (benchmarks/optimizer_memory.py: 2.15 GiB of
temporaries for one mT5 [250112, 768] matrix). Here each parameter's update is one
expression: a reduction pass (the second-moment means and the update's RMS) and
one elementwise pass that recomputes the update into the parameter, 0.72 GiB for
the same matrix.

The state is optax's own (`init` is the optax chain's `init`), so checkpoints
written with either restore into the other; tests/test_adafactor.py checks both
give the same parameters and state step by step.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

EPSILON = 1e-30  # added to the squared gradient (optax's and Mesh TF's default)
MIN_DIM_SIZE_TO_FACTOR = 128  # factor the second moment only over axes this long
MIN_PARAMETER_SCALE = 1e-3  # floor of the parameter-RMS step scale
UPDATE_CLIPPING = 1.0  # the update's RMS is clipped to this


def optax_adafactor(learning_rate: optax.Schedule, *, decay_rate: float,
                    clip_global_norm: float, weight_decay_rate: float
                    ) -> optax.GradientTransformation:
  """The optax chain this module computes: T5's settings, no momentum."""
  core = optax.adafactor(
      learning_rate=learning_rate, decay_rate=decay_rate, clipping_threshold=UPDATE_CLIPPING,
      multiply_by_parameter_scale=True, momentum=None, eps=EPSILON,
      min_dim_size_to_factor=MIN_DIM_SIZE_TO_FACTOR,
      weight_decay_rate=weight_decay_rate or None)
  if clip_global_norm:
    core = optax.chain(optax.clip_by_global_norm(clip_global_norm), core)
  return core


def factored_axes(shape: tuple[int, ...]) -> tuple[int, int] | None:
  """(second-longest, longest) axis when both are >= MIN_DIM_SIZE_TO_FACTOR, as optax picks."""
  if len(shape) < 2:
    return None
  order = np.argsort(shape)
  if shape[order[-2]] < MIN_DIM_SIZE_TO_FACTOR:
    return None
  return int(order[-2]), int(order[-1])


def adafactor(learning_rate: optax.Schedule, *, decay_rate: float = 0.8,
              clip_global_norm: float = 1.0, weight_decay_rate: float = 0.0
              ) -> optax.GradientTransformation:
  """Global-norm clipping, then Adafactor (factored second moments, update clipping,
  parameter-scale steps), with the state of `optax_adafactor` and its updates."""
  reference = optax_adafactor(learning_rate, decay_rate=decay_rate,
                              clip_global_norm=clip_global_norm,
                              weight_decay_rate=weight_decay_rate)

  def update(grads, state, params):
    if params is None:
      raise ValueError("t5jax.train.adafactor needs the parameters: update(grads, state, params).")
    moments, schedule = _find_states(state)
    if clip_global_norm:
      norm = optax.tree.norm(grads)
      grad_scale = jnp.where(norm < clip_global_norm, 1.0, clip_global_norm / norm)
    else:
      grad_scale = jnp.float32(1.0)
    decay = 1.0 - (moments.count + 1).astype(jnp.float32) ** -decay_rate
    step_size = learning_rate(schedule.count)

    def one(grad, v_row, v_col, v, param):
      return _update_one(grad, v_row, v_col, v, param, grad_scale=grad_scale, decay=decay,
                         step_size=step_size, weight_decay_rate=weight_decay_rate)

    out = jax.tree.map(one, grads, moments.v_row, moments.v_col, moments.v, params)
    pick = lambda field: jax.tree.map(lambda o: getattr(o, field), out,
                                      is_leaf=lambda o: isinstance(o, _Result))
    new_moments = optax.FactoredState(count=optax.safe_increment(moments.count),
                                      v_row=pick("v_row"), v_col=pick("v_col"), v=pick("v"))
    new_schedule = optax.ScaleByScheduleState(count=optax.safe_increment(schedule.count))
    return pick("update"), _replace_states(state, new_moments, new_schedule)

  return optax.GradientTransformation(reference.init, update)


class _Result(NamedTuple):
  update: jax.Array
  v_row: jax.Array
  v_col: jax.Array
  v: jax.Array


def _update_one(grad, v_row, v_col, v, param, *, grad_scale, decay, step_size,
                weight_decay_rate):
  """One parameter's (update, v_row, v_col, v); the update is a single expression of
  the gradient, the new moments and four scalars, so XLA does not store it."""
  grad = grad * grad_scale.astype(grad.dtype)
  squared = jnp.square(grad) + EPSILON
  axes = factored_axes(param.shape)
  if axes is not None:
    col_axis, row_axis = axes  # optax's (d1, d0): v_row drops d0, v_col drops d1
    v_row = (decay * v_row + (1.0 - decay) * jnp.mean(squared, axis=row_axis)).astype(param.dtype)
    v_col = (decay * v_col + (1.0 - decay) * jnp.mean(squared, axis=col_axis)).astype(param.dtype)
    row_mean_axis = col_axis - 1 if col_axis > row_axis else col_axis
    row_factor = (v_row / jnp.mean(v_row, axis=row_mean_axis, keepdims=True)) ** -0.5
    col_factor = v_col ** -0.5
    scaled = (grad * jnp.expand_dims(row_factor, axis=row_axis)
              * jnp.expand_dims(col_factor, axis=col_axis))
  else:
    v = (decay * v + (1.0 - decay) * squared).astype(param.dtype)
    scaled = grad * v ** -0.5
  clip = jnp.maximum(1.0, jnp.sqrt(jnp.mean(jnp.square(scaled))) / UPDATE_CLIPPING)
  # optax.safe_root_mean_squares's value; its where() (for gradients through the
  # optimizer, which nothing here takes) would be one more [param]-sized pass.
  param_rms = jnp.maximum(jnp.sqrt(jnp.mean(jnp.square(param))), MIN_PARAMETER_SCALE)
  scale = step_size * param_rms / clip
  step = scaled * scale.astype(param.dtype)
  if weight_decay_rate:
    step = step + weight_decay_rate * param
  return _Result(-step, v_row, v_col, v)


_STATES = (optax.FactoredState, optax.ScaleByScheduleState)


def _find_states(state: Any) -> tuple[optax.FactoredState, optax.ScaleByScheduleState]:
  """The second-moment and learning-rate-schedule states inside optax's chain state."""
  found = [s for s in jax.tree.leaves(state, is_leaf=lambda s: isinstance(s, _STATES))
           if isinstance(s, _STATES)]
  moments = [s for s in found if isinstance(s, optax.FactoredState)]
  schedules = [s for s in found if isinstance(s, optax.ScaleByScheduleState)]
  if len(moments) != 1 or len(schedules) != 1:
    raise ValueError("t5jax.train.adafactor got a state that is not optax.adafactor's: expected one "
                     "FactoredState and one ScaleByScheduleState.")
  return moments[0], schedules[0]


def _replace_states(state, moments, schedule):
  def swap(s):
    if isinstance(s, optax.FactoredState):
      return moments
    if isinstance(s, optax.ScaleByScheduleState):
      return schedule
    return s
  return jax.tree.map(swap, state, is_leaf=lambda s: isinstance(s, _STATES))
