"""Temporaries of one Adafactor update of one [vocab, embed] matrix, as XLA compiles it.

mT5's two 250,112 x 768 matrices dominate its step's memory
(docs/performance/memory.md). This compiles, for one such fp32 parameter and its gradient, the update
as optax chains it (global-norm clipping, then optax.adafactor with T5's settings:
t5jax.train.adafactor.optax_adafactor) and as t5jax runs it (t5jax.train.optim.make_optimizer:
the same arithmetic and state, one reduction pass and one elementwise pass per
parameter), reports XLA's temporaries for each (compile only), and checks that the
two give the same parameters over two steps on a small matrix:

  python benchmarks/optimizer_memory.py --vocab 250112 --embed 768
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp

from report import emit_json


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--vocab", type=int, default=250112)
  p.add_argument("--embed", type=int, default=768)
  p.add_argument("--json_out", default=None, help="append the JSON line to this file")
  args = p.parse_args()

  from t5jax.train import adafactor, optim
  import optax

  cfg = optim.OptimizerConfig(name="adafactor")
  ours = optim.make_optimizer(cfg)
  theirs = adafactor.optax_adafactor(optim.learning_rate_schedule(cfg),
                                     decay_rate=cfg.adafactor_decay_rate,
                                     clip_global_norm=cfg.clip_grad_norm, weight_decay_rate=0.0)
  param = jax.ShapeDtypeStruct((args.vocab, args.embed), jnp.float32)

  def updater(tx):
    def update(grad, state, param):
      updates, state = tx.update(grad, state, param)
      return optax.apply_updates(param, updates), state
    return update

  def temporaries(tx):
    state = jax.eval_shape(tx.init, param)
    return jax.jit(updater(tx), donate_argnums=(1, 2)).lower(
        param, state, param).compile().memory_analysis().temp_size_in_bytes
  optax_temp, two_pass_temp = temporaries(theirs), temporaries(ours)
  matrix = args.vocab * args.embed * 4
  # Same arithmetic: two steps on a small matrix, against optax's update.
  k_p, k_g = jax.random.split(jax.random.key(0))
  small_p = jax.random.normal(k_p, (256, 160)) * 0.05
  want_p = got_p = small_p
  want_state, got_state = theirs.init(small_p), ours.init(small_p)
  for step in range(2):
    grad = jax.random.normal(jax.random.fold_in(k_g, step), small_p.shape) * 0.01
    want_p, want_state = updater(theirs)(grad, want_state, want_p)
    got_p, got_state = updater(ours)(grad, got_state, got_p)
  max_difference = float(jnp.max(jnp.abs(got_p - want_p)))
  max_change = float(jnp.max(jnp.abs(want_p - small_p)))
  print(f"same arithmetic: after 2 steps on a 256 x 160 matrix the two differ by at most "
        f"{max_difference:.1e} (the parameters moved by up to {max_change:.1e})")
  print(f"one fp32 [{args.vocab}, {args.embed}] matrix: {matrix / 2**30:.2f} GiB")
  print(f"optax chain update temporaries:      {optax_temp / 2**30:.2f} GiB "
        f"({optax_temp / matrix:.1f} matrices)")
  print(f"t5jax two-pass update temporaries:   {two_pass_temp / 2**30:.2f} GiB "
        f"({two_pass_temp / matrix:.1f} matrices)")
  emit_json({"benchmark": "optimizer_memory", "vocab": args.vocab, "embed": args.embed,
             "jax": jax.__version__, "backend": jax.default_backend(),
             "matrix_bytes": matrix, "optax_temp_bytes": optax_temp,
             "two_pass_temp_bytes": two_pass_temp, "two_step_max_difference": max_difference,
             "two_step_max_change": max_change}, args.json_out)


if __name__ == "__main__":
  main()
