"""Input-pipeline throughput against the train step's consumption, in one process.

For one task or mixture and batch shape it measures (1) how fast
`t5jax.data.pipeline.make_batches` produces packed batches (batches/s, examples/s,
target tokens/s, with the background prefetch thread the trainer uses), and (2) how
fast the jitted train step of a model config consumes batches of that shape. The
pipeline is not the bottleneck when ratio = pipeline batches/s / step batches/s > 1.

  python benchmarks/input_pipeline.py --task text_span_corruption --batch 32 \\
      --inputs_length 512 --targets_length 114 --model t5_1_1_tiny
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from t5jax import losses, optim, partitioning, train_step
from t5jax.data import pipeline, tasks  # noqa: F401  (registers the shipped tasks)
from t5jax.model import config as model_config
from t5jax.model import t5


def pipeline_rate(spec: pipeline.InputSpec, batch: int, num_batches: int):
  """Batches/s, examples/s and target tokens/s of the prefetched batch iterator."""
  start = time.perf_counter()
  iterator = pipeline.make_batches(spec, batch)
  first = next(iterator)
  startup = time.perf_counter() - start
  examples = tokens = 0
  start = time.perf_counter()
  for _ in range(num_batches):
    b = next(iterator)
    # A packed row holds one example per segment: count distinct segment ids > 0.
    seg = b["decoder_segment_ids"]
    examples += int(sum(len(np.unique(row[row > 0])) for row in seg))
    tokens += int(np.sum(b["decoder_loss_weights"]))
  seconds = time.perf_counter() - start
  return first, {"startup_s": startup, "batches_per_s": num_batches / seconds,
                 "examples_per_s": examples / seconds,
                 "target_tokens_per_s": tokens / seconds}


def step_rate(model_name: str, batch_arrays: dict, steps: int, dtype: str) -> float:
  """Batches/s the jitted train step consumes (Adafactor; compile excluded)."""
  model = t5.Transformer(model_config.get_config(model_name, dtype=dtype))
  opt = optim.OptimizerConfig()
  tx = optim.make_optimizer(opt)
  mesh = partitioning.make_mesh(partitioning.MeshConfig(data=-1))
  num_tasks = int(batch_arrays["decoder_task_ids"].max()) + 1
  with partitioning.sharding_context(mesh):
    state, shardings = train_step.create_train_state(model, tx, mesh, seed=0)
    step = train_step.jit_train_step(
        mesh, shardings, model=model, tx=tx, loss_cfg=losses.LossConfig(),
        task_weights_k=jnp.ones(num_tasks), microbatches=1,
        schedule=optim.learning_rate_schedule(opt))
    batch = partitioning.host_batch_to_global(batch_arrays, mesh)
    state, m = step(state, batch)
    jax.block_until_ready(m)
    start = time.perf_counter()
    for _ in range(steps):
      state, m = step(state, batch)
    jax.block_until_ready(m)
  return steps / (time.perf_counter() - start)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--task", default="text_span_corruption")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--inputs_length", type=int, default=512)
  p.add_argument("--targets_length", type=int, default=114)
  p.add_argument("--batches", type=int, default=50)
  p.add_argument("--model", default="t5_1_1_tiny")
  p.add_argument("--dtype", default="float32")
  p.add_argument("--steps", type=int, default=5)
  args = p.parse_args(argv)
  spec = pipeline.InputSpec(args.task, inputs_length=args.inputs_length,
                            targets_length=args.targets_length)
  first, produced = pipeline_rate(spec, args.batch, args.batches)
  consumed = step_rate(args.model, first, args.steps, args.dtype)
  result = {"task": args.task, "batch": args.batch, "lengths": [args.inputs_length,
                                                                args.targets_length],
            "model": args.model, **produced, "step_batches_per_s": consumed,
            "pipeline_over_step": produced["batches_per_s"] / consumed}
  print(f"pipeline: {produced['batches_per_s']:.2f} batches/s, "
        f"{produced['examples_per_s']:,.0f} examples/s, "
        f"{produced['target_tokens_per_s']:,.0f} target tokens/s (startup "
        f"{produced['startup_s']:.1f} s)")
  print(f"train step ({args.model}): {consumed:.2f} batches/s")
  print(f"pipeline / step = {result['pipeline_over_step']:.2f} (> 1: the input is not the "
        "bottleneck)")
  print(json.dumps(result))


if __name__ == "__main__":
  main()
