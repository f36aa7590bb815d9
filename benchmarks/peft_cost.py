"""What full fine-tuning, LoRA and prompt tuning cost: trainable parameters, optimizer
state, checkpoint bytes and step time (this machine), and for sizes that cannot run
here, libtpu's per-chip memory of the compiled step on one TPU chip.

  python benchmarks/peft_cost.py --time_model t5_1_1_base --batch 4 \\
      --compile_model t5_1_1_xl --compile_type v6e-1 --out benchmarks/results/peft_cost.jsonl

Variants (the recipes' optimizers): full (runs/finetune.gin: Adafactor, every parameter),
lora (runs/lora.gin: rank 8 on q and v, AdamW on the LoRA only), prompt
(runs/prompt_tuning.gin: 20 vectors, AdamW), and lora_per_task (one LoRA for each of 4
task slots, tokens routed to their task's). Step times are medians over rounds in which
the variants take turns, fp32 on the CPU, at --batch x 512 / 114 tokens; XLA's FLOP count
of each step is beside them. Checkpoint bytes: what a save writes (fp32 parameters
saved, optimizer state).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from t5jax.model import config as model_config
from t5jax.model import param_tree, peft, t5, trainable
from t5jax.parallel import partitioning
from t5jax.train import losses, optim, step as train_step

from train_step import synthetic_batch  # benchmarks/train_step.py, beside this script

LENGTHS = (512, 114)
SLOTS = ("a", "b", "c", "d")
VARIANTS = {
    "full": ({}, optim.OptimizerConfig(name="adafactor", learning_rate=1e-3, decay="constant")),
    "lora": ({"lora_rank": 8}, optim.OptimizerConfig(name="adamw", learning_rate=1e-3,
                                                     decay="constant")),
    "lora_per_task": ({"lora_rank": 8, "task_slots": SLOTS, "peft_per_task": True},
                      optim.OptimizerConfig(name="adamw", learning_rate=1e-3, decay="constant")),
    "prompt": ({"prompt_length": 20}, optim.OptimizerConfig(name="adamw", learning_rate=0.03,
                                                            decay="constant")),
}
GIN = {"full": [], "lora": ["runs/lora.gin"], "prompt": ["runs/prompt_tuning.gin"]}


def _bytes(tree) -> int:
  return int(sum(x.size * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def _setup(model_name: str, variant: str):
  overrides, opt = VARIANTS[variant]
  cfg = model_config.get_config(model_name, dtype="float32", dropout_rate=0.1, **overrides)
  pattern = trainable.effective_pattern("", cfg)
  opt = optim.OptimizerConfig(**{**opt.__dict__, "trainable": pattern})
  return cfg, opt, pattern


def sizes(model_name: str, variant: str) -> dict:
  cfg, opt, pattern = _setup(model_name, variant)
  abstract = param_tree.abstract_params(t5.Transformer(cfg))
  trained = trainable.parts(abstract, pattern)[0] if pattern else abstract
  opt_state = jax.eval_shape(optim.make_optimizer(opt).init, abstract)
  return {"parameters": int(sum(x.size for x in jax.tree.leaves(abstract))),
          "trainable": int(sum(x.size for x in jax.tree.leaves(trained))),
          "optimizer_state_bytes": _bytes(opt_state),
          "checkpoint_bytes": _bytes(trained) + _bytes(opt_state)}


def _batch(batch: int, seed: int) -> dict:
  """train_step.py's synthetic rows, row r in task slot r % 4 (for per-task LoRA)."""
  out = synthetic_batch(batch, *LENGTHS, 32000, seed)
  slots_b1 = (np.arange(batch) % len(SLOTS))[:, None].astype(np.int32)
  out["encoder_task_ids"] = np.broadcast_to(slots_b1, (batch, LENGTHS[0])).copy()
  out["decoder_task_ids"] = np.broadcast_to(slots_b1, (batch, LENGTHS[1])).copy()
  return out


def time_steps(model_name: str, batch: int, rounds: int, steps: int) -> dict:
  """Median step seconds and XLA FLOPs of each variant, the variants taking turns."""
  mesh = partitioning.make_mesh(partitioning.MeshConfig())
  runners = {}
  for seed, variant in enumerate(VARIANTS):
    cfg, opt, pattern = _setup(model_name, variant)
    model = t5.Transformer(cfg)
    tx = optim.make_optimizer(opt)
    num_tasks = len(SLOTS)
    with partitioning.sharding_context(mesh):
      state, shardings = train_step.create_train_state(model, tx, mesh, 0, *LENGTHS, {})
      fn = train_step.jit_train_step(
          mesh, shardings, train_step.StepSettings(
              model=model, tx=tx, loss_cfg=losses.LossConfig(),
              task_weights_k=jnp.ones(num_tasks), microbatches=1,
              schedule=optim.learning_rate_schedule(opt),
              slot_of_task_k=train_step.task_slot_table(model, list(SLOTS)),
              trainable_pattern=pattern))
      data = partitioning.host_batch_to_global(_batch(batch, seed), mesh)
      compiled = fn.lower(state, data).compile()
      cost = compiled.cost_analysis()
      cost = cost[0] if isinstance(cost, (list, tuple)) else cost
      state, _ = fn(state, data)  # warm-up
      jax.block_until_ready(state)
    runners[variant] = {"fn": fn, "state": state, "data": data, "times": [],
                        "flops": float(cost["flops"])}
  # Timed in the sharding context the warm-up ran in: jit's cache is keyed by it, and a
  # call outside would compile again.
  with partitioning.sharding_context(mesh):
    for _ in range(rounds):
      for variant, r in runners.items():
        for _ in range(steps):
          start = time.perf_counter()
          r["state"], metrics = r["fn"](r["state"], r["data"])
          jax.block_until_ready(metrics["loss"])
          r["times"].append(time.perf_counter() - start)
  return {v: {"step_s": statistics.median(r["times"]), "xla_flops": r["flops"]}
          for v, r in runners.items()}


def tpu_memory(model_name: str, accelerator_type: str, batch: int) -> dict:
  """libtpu's compile of the fine-tuning step on `accelerator_type` (scanned layers,
  full remat, bf16 activations), per variant: peak bytes per chip and whether it fits."""
  out = {}
  for variant, gin_files in GIN.items():
    settings = {"dtype": "bfloat16", "scan_layers": True, "remat_policy": "full"}
    cmd = [sys.executable, "-m", "t5jax", "compile", "--topology", accelerator_type,
           "--gin_file=runs/finetune.gin", *[f"--gin_file={g}" for g in gin_files],
           f"--gin_file=models/{model_name}.gin", f"--gin.TrainConfig.batch_size={batch}",
           "--gin.InputSpec.inputs_length=512", "--gin.InputSpec.targets_length=114",
           *[f"--gin.ModelSettings.{name}={value!r}" for name, value in settings.items()]]
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode:
      out[variant] = {"error": result.stderr.strip().splitlines()[-1][:300]}
      continue
    report = json.loads(result.stdout.strip().splitlines()[-1])
    out[variant] = {k: report[k] for k in ("peak_bytes_per_device", "argument_size_in_bytes",
                                           "temp_size_in_bytes", "hbm_bytes_per_chip", "fits",
                                           "compile_seconds") if k in report}
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--time_model", default="t5_1_1_base")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=2)
  parser.add_argument("--size_models", default="t5_1_1_base,t5_1_1_xl,t5_1_1_xxl")
  parser.add_argument("--compile_model", default="t5_1_1_xl")
  parser.add_argument("--compile_type", default="v6e-1")
  parser.add_argument("--compile_batch", type=int, default=8)
  parser.add_argument("--skip_time", action="store_true")
  parser.add_argument("--skip_compile", action="store_true")
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  row = {"sizes": {m: {v: sizes(m, v) for v in VARIANTS} for m in args.size_models.split(",")}}
  print(json.dumps(row["sizes"], indent=1), flush=True)
  if not args.skip_time:
    row["time"] = {"model": args.time_model, "batch": args.batch, "lengths": LENGTHS,
                   "device": jax.devices()[0].device_kind,
                   "steps": time_steps(args.time_model, args.batch, args.rounds, args.steps)}
    print(json.dumps(row["time"], indent=1), flush=True)
  if not args.skip_compile:
    row["tpu"] = {"model": args.compile_model, "accelerator_type": args.compile_type,
                  "batch": args.compile_batch,
                  "variants": tpu_memory(args.compile_model, args.compile_type,
                                         args.compile_batch)}
    print(json.dumps(row["tpu"], indent=1), flush=True)
  if args.out:
    with open(args.out, "a") as f:
      f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
  main()
