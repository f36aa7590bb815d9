"""`t5jax compile`: compile the train step ahead of time for a mesh of N devices
(fake CPU devices, no real arrays) and report per-device memory and FLOPs, so a
user can check that a model fits before paying for the hardware."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from t5jax.train import optim, step as train_step, task_weighting
from t5jax.parallel import partitioning
from t5jax.data import pipeline
from t5jax.model.flops import model_flops_per_step


def abstract_batch(batch_size: int, inputs_length: int, targets_length: int, mesh):
  """The pipeline's batch (pipeline.MODEL_FEATURES) as shapes, sharded over the batch."""
  sharding = partitioning.batch_sharding(mesh)
  length = lambda k: inputs_length if k.startswith("encoder_") else targets_length
  return {k: jax.ShapeDtypeStruct((batch_size, length(k)), jnp.int32, sharding=sharding)
          for k in pipeline.MODEL_FEATURES}


def compile_train_step(config, num_tasks: int = 1) -> dict:
  """Lowers and compiles `config`'s train step on the current devices; returns a
  report with per-device bytes, FLOPs and the time it took."""
  from t5jax.train.loop import build_model
  mesh = partitioning.make_mesh(config.mesh)
  partitioning.check_batch_size(config.batch_size, mesh, config.microbatches)
  model = build_model(config)
  tx = optim.make_optimizer(config.optimizer)
  lengths = (config.data.inputs_length, config.data.targets_length)
  slot_table = None
  if model.config.has_task_parameters:  # per-task parameters: route the run's tasks
    task_names = pipeline.task_names(config.data.mixture_or_task)
    slot_table, num_tasks = train_step.task_slot_table(model, task_names), len(task_names)
  start = time.time()
  with partitioning.sharding_context(mesh):
    task_state = task_weighting.init_state(config.loss, num_tasks)
    shardings = train_step.state_shardings(model, tx, mesh, *lengths, task_state)
    abstract = train_step.abstract_train_state(model, tx, *lengths, task_state)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            abstract, shardings)
    step = train_step.jit_train_step(
        mesh, shardings, model=model, tx=tx, loss_cfg=config.loss,
        task_weights_k=jnp.ones(num_tasks), microbatches=config.microbatches,
        schedule=optim.learning_rate_schedule(config.optimizer), slot_of_task_k=slot_table)
    lowered = step.lower(abstract, abstract_batch(config.batch_size, *lengths, mesh))
    compiled = lowered.compile()
  seconds = time.time() - start
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params))
  report = {
      "model": config.model, "parameters": params, "mesh": dict(mesh.shape),
      "devices": mesh.size, "batch": config.batch_size, "lengths": list(lengths),
      "compile_seconds": round(seconds, 1),
      "fused_cross_entropy": config.loss.fused_cross_entropy,
      "xla_flops_per_device": float(cost.get("flops", float("nan"))) if cost else float("nan"),
      "model_flops_per_device": model_flops_per_step(
          model.config, config.batch_size, *lengths)["total"] / mesh.size,
  }
  for field in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
                "alias_size_in_bytes", "generated_code_size_in_bytes"):
    report[field] = int(getattr(memory, field, 0) or 0)
  # Donated state aliases its outputs, so peak = arguments + temporaries + outputs
  # that are not aliases of arguments.
  report["peak_bytes_per_device"] = (report["argument_size_in_bytes"]
                                     + report["temp_size_in_bytes"]
                                     + report["output_size_in_bytes"]
                                     - report["alias_size_in_bytes"])
  return report


def format_report(r: dict) -> str:
  gib = lambda b: f"{b / 2**30:.2f} GiB"
  return "\n".join([
      f"{r['model']}: {r['parameters']:,} parameters on mesh {r['mesh']} ({r['devices']} "
      f"devices), batch {r['batch']}, lengths {r['lengths']}; compiled in "
      f"{r['compile_seconds']} s; cross-entropy "
      f"{'fused' if r['fused_cross_entropy'] else 'from full logits'}",
      f"  per device: arguments {gib(r['argument_size_in_bytes'])} (parameters + optimizer "
      f"state + batch shard), temporaries {gib(r['temp_size_in_bytes'])}, "
      f"peak ~{gib(r['peak_bytes_per_device'])}",
      f"  per device: {r['model_flops_per_device'] / 1e12:.3f} model TFLOP per step (matmuls, "
      f"forward x 3); XLA counts {r['xla_flops_per_device'] / 1e12:.3f} (the body of a "
      "scan, of layers or of fused cross-entropy blocks, is counted once; remat "
      "recomputation is included)",
  ])
