"""Temporaries of one Adafactor update of one [vocab, embed] matrix, as XLA compiles it.

mT5's two 250,112 x 768 matrices dominate its step's memory (docs/performance.md,
"Memory"). This compiles, for one such fp32 parameter and its gradient, the update
t5jax runs today (optax: global-norm clipping, then optax.adafactor as
t5jax.optim.make_optimizer builds it) and the same arithmetic written as one
reduction pass and one elementwise pass that recomputes the update instead of
storing it (a design sketch, not t5jax's optimizer: its state is three arrays, not
optax's), and reports XLA's temporaries for each (compile only, nothing runs):

  python benchmarks/optimizer_memory.py --vocab 250112 --embed 768
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from report import emit_json


def two_pass_update(grad_vd, row_v, col_d, count, param_vd, *, learning_rate=0.01,
                       decay_exponent=0.8, eps1=1e-30, eps2=1e-3, clip=1.0):
  """Global-norm clip, factored second moments, update RMS clip and parameter scale,
  with the [V, D] update recomputed in the final elementwise pass."""
  scale = jnp.minimum(1.0, 1.0 / jnp.sqrt(jnp.sum(grad_vd * grad_vd)))
  count = count + 1
  decay = 1.0 - count.astype(jnp.float32) ** -decay_exponent
  squared_vd = (scale * grad_vd) ** 2 + eps1
  row_v = decay * row_v + (1.0 - decay) * jnp.mean(squared_vd, axis=1)
  col_d = decay * col_d + (1.0 - decay) * jnp.mean(squared_vd, axis=0)
  row_factor_v1 = jax.lax.rsqrt(row_v / jnp.mean(row_v))[:, None]
  col_factor_1d = jax.lax.rsqrt(col_d)[None, :]
  update_vd = lambda: scale * grad_vd * row_factor_v1 * col_factor_1d
  update_rms = jnp.sqrt(jnp.mean(update_vd() ** 2))
  param_scale = jnp.maximum(jnp.sqrt(jnp.mean(param_vd * param_vd)), eps2)
  step_vd = learning_rate * param_scale * update_vd() / jnp.maximum(1.0, update_rms / clip)
  return param_vd - step_vd, row_v, col_d, count


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--vocab", type=int, default=250112)
  p.add_argument("--embed", type=int, default=768)
  p.add_argument("--json_out", default=None, help="append the JSON line to this file")
  args = p.parse_args()

  from t5jax import optim  # the optimizer t5jax trains with
  import optax

  param = jax.ShapeDtypeStruct((args.vocab, args.embed), jnp.float32)
  tx = optim.make_optimizer(optim.OptimizerConfig(name="adafactor"))
  state = jax.eval_shape(tx.init, param)

  def optax_update(grad, state, param):
    updates, state = tx.update(grad, state, param)
    return optax.apply_updates(param, updates), state

  optax_temp = jax.jit(optax_update, donate_argnums=(1, 2)).lower(
      param, state, param).compile().memory_analysis().temp_size_in_bytes
  vector = lambda n: jax.ShapeDtypeStruct((n,), jnp.float32)
  two_pass_temp = jax.jit(two_pass_update, donate_argnums=(1, 2, 4)).lower(
      param, vector(args.vocab), vector(args.embed), jax.ShapeDtypeStruct((), jnp.int32),
      param).compile().memory_analysis().temp_size_in_bytes
  matrix = args.vocab * args.embed * 4
  # Same arithmetic: two steps on a small matrix, against optax's update.
  k_p, k_g = jax.random.split(jax.random.key(0))
  small_p = jax.random.normal(k_p, (256, 160)) * 0.05
  small_state, row, col, count = tx.init(small_p), jnp.zeros(256), jnp.zeros(160), 0
  want_p = got_p = small_p
  for step in range(2):
    grad = jax.random.normal(jax.random.fold_in(k_g, step), small_p.shape) * 0.01
    want_p, small_state = optax_update(grad, small_state, want_p)
    got_p, row, col, count = two_pass_update(grad, row, col, jnp.int32(count), got_p)
  max_difference = float(jnp.max(jnp.abs(got_p - want_p)))
  max_change = float(jnp.max(jnp.abs(want_p - small_p)))
  print(f"same arithmetic: after 2 steps on a 256 x 160 matrix the two differ by at most "
        f"{max_difference:.1e} (the parameters moved by up to {max_change:.1e})")
  print(f"one fp32 [{args.vocab}, {args.embed}] matrix: {matrix / 2**30:.2f} GiB")
  print(f"optax (t5jax.optim) update temporaries: {optax_temp / 2**30:.2f} GiB "
        f"({optax_temp / matrix:.1f} matrices)")
  print(f"two-pass update temporaries:           {two_pass_temp / 2**30:.2f} GiB "
        f"({two_pass_temp / matrix:.1f} matrices)")
  emit_json({"benchmark": "optimizer_memory", "vocab": args.vocab, "embed": args.embed,
             "jax": jax.__version__, "backend": jax.default_backend(),
             "matrix_bytes": matrix, "optax_temp_bytes": optax_temp,
             "two_pass_temp_bytes": two_pass_temp, "two_step_max_difference": max_difference,
             "two_step_max_change": max_change}, args.json_out)


if __name__ == "__main__":
  main()
