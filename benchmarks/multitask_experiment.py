"""Hard vs soft parameter sharing vs adapters vs dynamic task weighting vs one model per
task, for the same training budget, on the shipped supervised mixture (9 tasks).

Every variant trains the tiny T5 1.0 of gin_configs/experiments/supervised_base.gin
for --steps steps of 32 packed rows (128 input / 32 target tokens) and is evaluated
at the end on --eval_examples validation examples per task (greedy decoding, each
task's SeqIO metrics). "One model per task" trains 9 models; task t gets
rate_t x --steps steps (rate_t its examples-proportional mixing rate), so each model
sees as many of its task's examples as the multi-task runs do and the 9 runs
together cost what one multi-task run costs (a floor of --min_task_steps steps
adds a little; the table gives the total).

  python benchmarks/multitask_experiment.py --steps 600 --out benchmarks/results/multitask

writes the table into docs/experiments.md (between its table markers; the text
around them is kept) and docs/experiments_task_losses.png (each task's training
loss per variant). Runs that finished are reused: delete their
directory (or pass --fresh) to train them again.

  python benchmarks/multitask_experiment.py --step_cost

trains nothing: it compiles the train step of every model variant (hard, soft,
adapters) in one process, takes XLA's FLOP count of each, times steps on one real
batch of the mixture with the variants taking turns, and writes the cost table of
docs/experiments.md (between its cost markers).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from experiment_runs import (  # benchmarks/experiment_runs.py, beside this script
    final_eval, records, train_once, wall_seconds, write_table)

TASKS = ("dialogsum", "dialogsum_next_turn", "glue_cola", "glue_rte", "glue_sst2",
         "multi30k_en_de", "multi30k_en_fr", "scitldr", "xquad_en")
# The metric each task is judged by (its SeqIO metrics; names as evaluate.py flattens them).
PRIMARY_METRIC = {
    "dialogsum": "rougeL", "dialogsum_next_turn": "rougeL", "glue_cola": "matthews_corrcoef",
    "glue_rte": "accuracy", "glue_sst2": "accuracy", "multi30k_en_de": "bleu",
    "multi30k_en_fr": "bleu", "scitldr": "rougeL", "xquad_en": "f1",
}
BASE_GIN = "experiments/supervised_base.gin"
SLOTS = "ModelSettings.task_slots = (" + ", ".join(f"'{t}'" for t in TASKS) + ",)"

# name: (description, gin bindings)
VARIANTS = {
    "hard": ("hard sharing (T5): every parameter shared", []),
    "soft": ("soft sharing: decoder layers per task, lambda = 0.01",
             [SLOTS, "ModelSettings.task_specific = ('decoder.layer',)",
              "LossConfig.soft_sharing_l2 = 0.01"]),
    "adapters": ("adapters: a 32-wide adapter per task after every layer",
                 [SLOTS, "ModelSettings.adapter_dim = 32"]),
    "uncertainty": ("hard sharing + uncertainty weighting (per-task mean losses)",
                    ["LossConfig.normalization = 'per_task'",
                     "LossConfig.task_weighting = 'uncertainty'"]),
    "dwa": ("hard sharing + dynamic weight averaging (windows of 50 steps, T = 2)",
            ["LossConfig.task_weighting = 'dwa'", "LossConfig.dwa_window = 50"]),
}


def _train(run_dir: str, bindings: list[str], fresh: bool) -> float:
  """Trains one run (skipped when it already has its final evaluation); returns
  the wall time in seconds (0 when skipped)."""
  flags = [f"--gin.{b.replace(' = ', '=', 1)}" for b in bindings]
  return train_once(run_dir, [f"--gin_file={BASE_GIN}", *flags], fresh)


def _task_steps(steps: int, min_steps: int) -> dict[str, int]:
  from t5jax.data import mixtures, registry
  rates = mixtures.normalized_rates(registry.get_task_or_mixture("supervised_mix"))
  return {t: max(min_steps, int(round(rates[t] * steps))) for t in TASKS}


def _schedule(steps: int, total: int) -> list[str]:
  """The base run's warm-up and decay start, scaled to a run of `steps` steps."""
  warmup = max(1, round(20 * steps / total))
  return [f"TrainConfig.num_steps = {steps}", f"EvalConfig.every_steps = {steps}",
          # About 10 points on a short run's loss curve; every 20 steps on the long runs.
          f"TrainConfig.log_every = {max(1, min(20, steps // 10))}",
          f"OptimizerConfig.warmup_steps = {warmup}",
          f"OptimizerConfig.decay_start = {max(warmup, round(100 * steps / total))}"]


def run(args) -> dict:
  """Trains every variant; returns {variant: {"eval": {...}, "curves": {...}, ...}}."""
  common = _schedule(args.steps, args.steps) + [f"EvalConfig.max_examples = {args.eval_examples}"]
  results = {}
  for name, (_, bindings) in VARIANTS.items():
    run_dir = os.path.join(args.out, name)
    _train(run_dir, common + bindings, args.fresh)
    train = [r for r in records(run_dir) if r["split"] == "train"]
    results[name] = {
        "eval": final_eval(run_dir), "seconds": wall_seconds(run_dir), "steps": args.steps,
        "curves": {t: [(r["step"], r[f"tasks/{t}/loss"]) for r in train
                       if f"tasks/{t}/loss" in r] for t in TASKS}}
  per_task = {"eval": {}, "seconds": 0.0, "steps": 0, "curves": {}, "task_steps": {}}
  for task, steps in _task_steps(args.steps, args.min_task_steps).items():
    run_dir = os.path.join(args.out, f"single_{task}")
    _train(run_dir, _schedule(steps, args.steps) + [
        f"InputSpec.mixture_or_task = '{task}'",
        f"EvalConfig.max_examples = {args.eval_examples}"], args.fresh)
    per_task["eval"].update({k: v for k, v in final_eval(run_dir).items()
                             if k.startswith(task + "/")})
    per_task["seconds"] += wall_seconds(run_dir)
    per_task["steps"] += steps
    per_task["task_steps"][task] = steps
    # On the budget axis: step s of a task's own run is where the multi-task runs
    # have seen as many of its examples.
    scale = args.steps / steps
    per_task["curves"][task] = [(r["step"] * scale, r[f"tasks/{task}/loss"])
                                for r in records(run_dir)
                                if r["split"] == "train" and f"tasks/{task}/loss" in r]
  results["per_task"] = per_task
  return results


COLUMNS = ("per_task", "hard", "soft", "adapters", "uncertainty", "dwa")
LABELS = {"per_task": "one model per task", "hard": "hard", "soft": "soft",
          "adapters": "adapters", "uncertainty": "uncertainty", "dwa": "DWA"}


def task_rows(labels: list[str], evals: list[dict]) -> list[str]:
  """A markdown table's head and one row per task (its metric, its validation loss in
  brackets) and the mean validation loss, a column per final evaluation in `evals`."""
  lines = ["| task (metric) | " + " | ".join(labels) + " |", "|" + "---|" * (len(labels) + 1)]
  for task in TASKS:
    metric = PRIMARY_METRIC[task]
    cells = []
    for ev in evals:
      value, loss = ev.get(f"{task}/{metric}"), ev.get(f"{task}/loss")
      cells.append("n/a" if value is None else f"{value:.1f} ({loss:.2f})")
    lines.append(f"| {task} ({metric}) | " + " | ".join(cells) + " |")
  mean_loss = [np.mean([ev[f"{t}/loss"] for t in TASKS]) for ev in evals]
  lines.append("| mean eval loss | " + " | ".join(f"{x:.3f}" for x in mean_loss) + " |")
  return lines


def table(results: dict) -> str:
  lines = task_rows([LABELS[c] for c in COLUMNS], [results[c]["eval"] for c in COLUMNS])
  lines.append("| training steps (all runs) | " + " | ".join(
      str(results[c]["steps"]) for c in COLUMNS) + " |")
  lines.append("| wall time on this machine | " + " | ".join(
      f"{results[c]['seconds'] / 60:.1f} min" for c in COLUMNS) + " |")
  return "\n".join(lines)


def plot(results: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(3, 3, figsize=(13, 10), sharex=True)
  for ax, task in zip(axes.flat, TASKS):
    for c in COLUMNS:
      curve = results[c]["curves"].get(task, [])
      if curve:
        xs, ys = zip(*curve)
        ax.plot(xs, ys, label=LABELS[c], lw=1.2, ls="--" if c == "per_task" else "-")
    ax.set_title(task)
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
  for ax in axes[-1]:
    ax.set_xlabel("multi-task step (budget)")
  for ax in axes[:, 0]:
    ax.set_ylabel("training loss (per target token)")
  axes[0, 0].legend(fontsize=8)
  fig.suptitle("Per-task training loss, same budget (benchmarks/multitask_experiment.py)")
  fig.tight_layout()
  fig.savefig(path, dpi=90)


COST_LABELS = {"hard": "hard (and uncertainty, DWA)",
               "soft": "soft (9 copies of the decoder layers)",
               "adapters": "adapters (9 x 32 wide, every layer)"}


def _variant_step(bindings: list[str]):
  """(compiled step, state, batch, parameter count) of one variant's training run."""
  import jax
  from t5jax import config as gin_config
  from t5jax.train import optim, run_config, step as train_step, step_builder
  from t5jax.parallel import partitioning
  from t5jax.data import pipeline
  gin_config.parse_gin([BASE_GIN], bindings)
  cfg = run_config.TrainConfig()
  mesh = partitioning.make_mesh(partitioning.MeshConfig(data=1), devices=jax.devices()[:1])
  model = step_builder.build_model(cfg)
  tx = optim.make_optimizer(cfg.optimizer)
  tasks = pipeline.task_names(cfg.data.mixture_or_task)
  lengths = (cfg.data.inputs_length, cfg.data.targets_length)
  with partitioning.sharding_context(mesh):
    state, shardings = train_step.create_train_state(model, tx, mesh, 0, *lengths)
    step = train_step.jit_train_step(
        mesh, shardings, train_step.StepSettings(
            model=model, tx=tx, loss_cfg=cfg.loss,
            task_weights_k=cfg.loss.weights_vector(tasks),
            slot_of_task_k=train_step.task_slot_table(model, tasks), microbatches=1,
            schedule=optim.learning_rate_schedule(cfg.optimizer)))
    host = next(pipeline.make_batches(cfg.data, cfg.batch_size, 0, 1))
    batch = partitioning.host_batch_to_global(host, mesh)
    compiled = step.lower(state, batch).compile()
  params = sum(x.size for x in jax.tree.leaves(state.params))
  return compiled, state, batch, mesh, params


def step_cost(rounds: int, steps: int) -> dict:
  """XLA FLOPs and median step wall time of each variant, measured in one process
  with the variants taking turns (so that a change of load hits them all)."""
  import jax
  from t5jax.parallel import partitioning
  sides = {}
  for name in COST_LABELS:
    compiled, state, batch, mesh, params = _variant_step(VARIANTS[name][1])
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    sides[name] = {"compiled": compiled, "state": state, "batch": batch, "mesh": mesh,
                   "params": int(params), "flops": float(cost["flops"]), "times": []}
  for _ in range(rounds):
    for side in sides.values():
      with partitioning.sharding_context(side["mesh"]):
        side["state"], m = side["compiled"](side["state"], side["batch"])  # warm
        jax.block_until_ready(m)
        for _ in range(steps):
          start = time.perf_counter()
          side["state"], m = side["compiled"](side["state"], side["batch"])
          jax.block_until_ready(m)
          side["times"].append(time.perf_counter() - start)
  return {name: {"parameters": s["params"], "xla_flops": s["flops"],
                 "step_seconds": float(np.median(s["times"]))} for name, s in sides.items()}


def cost_table(cost: dict) -> str:
  hard = cost["hard"]
  lines = ["| variant | parameters | XLA FLOPs per train step | vs hard | step wall time | vs hard |",
           "|---|---|---|---|---|---|"]
  for name, c in cost.items():
    lines.append(
        f"| {COST_LABELS[name]} | {c['parameters']:,} | {c['xla_flops'] / 1e9:.1f} GFLOP | "
        f"{c['xla_flops'] / hard['xla_flops']:.2f} | {c['step_seconds'] * 1e3:.0f} ms | "
        f"{c['step_seconds'] / hard['step_seconds']:.2f} |")
  return "\n".join(lines)


START, END = "<!-- table:start -->", "<!-- table:end -->"
COST_START, COST_END = "<!-- cost:start -->", "<!-- cost:end -->"


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=600)
  parser.add_argument("--eval_examples", type=int, default=64)
  parser.add_argument("--min_task_steps", type=int, default=10)
  parser.add_argument("--out", default="benchmarks/results/multitask")
  parser.add_argument("--docs", default="docs")
  parser.add_argument("--fresh", action="store_true", help="retrain runs that finished")
  parser.add_argument("--step_cost", action="store_true",
                      help="only measure each variant's train-step FLOPs and wall time")
  parser.add_argument("--rounds", type=int, default=3, help="--step_cost: turns per variant")
  parser.add_argument("--timed_steps", type=int, default=5, help="--step_cost: steps per turn")
  args = parser.parse_args(argv)
  command = "python benchmarks/multitask_experiment.py " + " ".join(
      sys.argv[1:] if argv is None else argv)
  if args.step_cost:
    cost = step_cost(args.rounds, args.timed_steps)
    text = cost_table(cost)
    write_table(os.path.join(args.docs, "experiments.md"), text,
                                command.strip(), COST_START, COST_END)
    print(json.dumps(cost))
    print(text)
    return
  results = run(args)
  plot(results, os.path.join(args.docs, "experiments_task_losses.png"))
  summary = {c: {k: v for k, v in results[c].items() if k != "curves"} for c in COLUMNS}
  with open(os.path.join(args.out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  text = table(results)
  write_table(os.path.join(args.docs, "experiments.md"), text,
                              command.strip(), START, END)
  print(text)


if __name__ == "__main__":
  main()
