"""How long XLA takes to compile parameter initialisation, against the train step, on this
machine's default backend (CPU here), in one process.

Compiles, each from scratch (no persistent cache): `jax.random.normal` of N independent
[128, 4, 32] tensors for each N given, the model's `init` (parameters only, as training
creates them) and one train step on a [batch, length] packed batch, on one device.
Prints one JSON line.

  python benchmarks/init_compile.py --model t5_1_0_tiny --draws 10 50
"""

from __future__ import annotations

import argparse
import json
import time

from t5jax.cli import lib_logs

lib_logs.quiet_stderr()  # before TensorFlow and JAX load: their C++ start-up lines go

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from t5jax.model import config as model_config  # noqa: E402
from t5jax.model import t5  # noqa: E402
from t5jax.parallel import partitioning  # noqa: E402
from t5jax.train import losses, optim, step as train_step  # noqa: E402


def _compile_seconds(fn, *args) -> float:
  lowered = jax.jit(fn).lower(*args)
  start = time.perf_counter()
  lowered.compile()
  return time.perf_counter() - start


def _normals(n: int):
  def draw(key):
    return [jax.random.normal(k, (128, 4, 32)) for k in jax.random.split(key, n)]
  return draw


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default="t5_1_0_tiny")
  parser.add_argument("--draws", type=int, nargs="+", default=[10, 50])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--length", type=int, default=32)
  args = parser.parse_args()
  jax.config.update("jax_enable_compilation_cache", False)

  key = jax.random.key(0)
  result = {"backend": jax.default_backend(), "model": args.model}
  for n in args.draws:
    result[f"normal_x{n}_s"] = round(_compile_seconds(_normals(n), key), 2)

  cfg = model_config.get_config(args.model, dtype="float32")
  model = t5.Transformer(cfg)
  tx = optim.make_optimizer(optim.OptimizerConfig())
  init = train_step.make_init_fn(model, tx)
  result["parameter_tensors"] = len(jax.tree.leaves(jax.eval_shape(init, key).params))
  result["init_s"] = round(_compile_seconds(lambda k: init(k).params, key), 2)

  mesh = partitioning.make_mesh(partitioning.MeshConfig(data=1), devices=jax.devices()[:1])
  with partitioning.sharding_context(mesh):
    state, shardings = train_step.create_train_state(model, tx, mesh, seed=0)
    step = train_step.jit_train_step(mesh, shardings, train_step.StepSettings(
        model=model, tx=tx, loss_cfg=losses.LossConfig(), task_weights_k=jnp.ones(1),
        microbatches=1, schedule=optim.learning_rate_schedule(optim.OptimizerConfig())))
    tokens = np.ones((args.batch, args.length), np.int32)
    batch = {name: tokens for name in (
        "encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
        "encoder_segment_ids", "decoder_segment_ids", "encoder_positions",
        "decoder_positions")}
    batch.update(decoder_loss_weights=np.ones_like(tokens, np.float32),
                 decoder_task_ids=np.zeros_like(tokens),
                 encoder_task_ids=np.zeros_like(tokens))
    lowered = step.lower(state, partitioning.host_batch_to_global(batch, mesh))
    start = time.perf_counter()
    lowered.compile()
    result["train_step_s"] = round(time.perf_counter() - start, 2)
  print(json.dumps(result))


if __name__ == "__main__":
  main()
