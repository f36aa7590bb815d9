"""t5jax.train.adafactor computes optax's Adafactor (as T5 trains with it) with optax's state."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from t5jax.train import adafactor, optim


def _params():
  shapes = {
      "embedding": (300, 160),      # factored: both axes >= 128
      "kernel_3d": (4, 160, 130),   # factored over its two longest axes (1, 2)
      "kernel_flip": (130, 3, 150),  # longest axis last, second-longest first
      "narrow": (8, 200),           # not factored: second-longest axis < 128
      "scale": (200,),
  }
  keys = jax.random.split(jax.random.key(0), len(shapes))
  return {name: jax.random.normal(k, shape) * 0.05 for (name, shape), k in zip(shapes.items(), keys)}


def _grads(params, step, size):
  return jax.tree.map(lambda p: size * jax.random.normal(jax.random.fold_in(jax.random.key(step), p.size), p.shape), params)


@pytest.mark.parametrize("clip_global_norm,weight_decay_rate,grad_size",
                         [(1.0, 0.0, 1.0),    # global-norm clipping active (norm ~ 700)
                          (1.0, 0.0, 1e-4),   # inactive (norm ~ 0.07)
                          (0.0, 1e-3, 1.0)])  # no clipping, weight decay
def test_same_parameters_and_state_as_optax_step_by_step(clip_global_norm, weight_decay_rate,
                                                         grad_size):
  schedule = optim.learning_rate_schedule(optim.OptimizerConfig(warmup_steps=2, decay_start=3))
  kwargs = dict(decay_rate=0.8, clip_global_norm=clip_global_norm,
                weight_decay_rate=weight_decay_rate)
  ours = adafactor.adafactor(schedule, **kwargs)
  theirs = adafactor.optax_adafactor(schedule, **kwargs)
  params_ours = params_theirs = _params()
  state_ours, state_theirs = ours.init(params_ours), theirs.init(params_theirs)
  assert jax.tree.structure(state_ours) == jax.tree.structure(state_theirs)
  for step in range(4):
    grads = _grads(params_ours, step, grad_size)
    updates, state_ours = jax.jit(ours.update)(grads, state_ours, params_ours)
    params_ours = optax.apply_updates(params_ours, updates)
    updates, state_theirs = jax.jit(theirs.update)(grads, state_theirs, params_theirs)
    params_theirs = optax.apply_updates(params_theirs, updates)
    for ours_leaf, theirs_leaf in zip(jax.tree.leaves(state_ours), jax.tree.leaves(state_theirs)):
      np.testing.assert_allclose(ours_leaf, theirs_leaf, rtol=2e-6, atol=0)
    for name in params_ours:
      np.testing.assert_allclose(params_ours[name], params_theirs[name], rtol=1e-6, atol=1e-8,
                                 err_msg=f"{name} at step {step}")
  moved = max(float(jnp.max(jnp.abs(params_ours[n] - p))) for n, p in _params().items())
  assert moved > 1e-4  # the comparison is of parameters that moved


def test_make_optimizer_state_matches_optax_with_a_trainable_subset():
  cfg = optim.OptimizerConfig(trainable="embedding|scale")
  params = _params()
  state = optim.make_optimizer(cfg).init(params)
  reference = optax.multi_transform(
      {"train": adafactor.optax_adafactor(optim.learning_rate_schedule(cfg), decay_rate=0.8,
                                          clip_global_norm=1.0, weight_decay_rate=0.0),
       "frozen": optax.set_to_zero()},
      {n: "train" if n in ("embedding", "scale") else "frozen" for n in params})
  assert jax.tree.structure(state) == jax.tree.structure(reference.init(params))
  updates, _ = optim.make_optimizer(cfg).update(_grads(params, 0, 1.0), state, params)
  assert float(jnp.abs(updates["embedding"]).max()) > 0
  assert float(jnp.abs(updates["narrow"]).max()) == 0


def test_factored_axes_are_optaxs():
  assert adafactor.factored_axes((300, 160)) == (1, 0)
  assert adafactor.factored_axes((4, 160, 130)) == (2, 1)
  assert adafactor.factored_axes((8, 200)) is None
  assert adafactor.factored_axes((200,)) is None


def test_a_state_that_is_not_adafactors_is_refused():
  tx = adafactor.adafactor(lambda count: 0.01)
  params = _params()
  adam_state = optax.adam(1e-3).init(params)
  with pytest.raises(ValueError, match="not optax.adafactor's"):
    tx.update(params, adam_state, params)
