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
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

TASKS = ("dialogsum", "dialogsum_next_turn", "glue_cola", "glue_rte", "glue_sst2",
         "multi30k_en_de", "multi30k_en_fr", "scitldr", "xquad_en")
# The metric each task is judged by (its SeqIO metrics; names as evaluate.py flattens them).
PRIMARY_METRIC = {
    "dialogsum": "rougeL", "dialogsum_next_turn": "rougeL", "glue_cola": "matthews_corrcoef",
    "glue_rte": "accuracy", "glue_sst2": "accuracy", "multi30k_en_de": "bleu",
    "multi30k_en_fr": "bleu", "scitldr": "rougeL", "xquad_en": "f1",
}
BASE_GIN = "experiments/supervised_base.gin"
MODEL_BASE = "'dtype': 'float32', 'dropout_rate': 0.0"
SLOTS = "'task_slots': (" + ", ".join(f"'{t}'" for t in TASKS) + ",)"

# name: (description, gin bindings)
VARIANTS = {
    "hard": ("hard sharing (T5): every parameter shared", []),
    "soft": ("soft sharing: decoder layers per task, lambda = 0.01",
             [f"TrainConfig.model_overrides = {{{MODEL_BASE}, {SLOTS}, "
              "'task_specific': ('decoder.layer',)}",
              "LossConfig.soft_sharing_l2 = 0.01"]),
    "adapters": ("adapters: a 32-wide adapter per task after every layer",
                 [f"TrainConfig.model_overrides = {{{MODEL_BASE}, {SLOTS}, 'adapter_dim': 32}}"]),
    "uncertainty": ("hard sharing + uncertainty weighting (per-task mean losses)",
                    ["LossConfig.normalization = 'per_task'",
                     "LossConfig.task_weighting = 'uncertainty'"]),
    "dwa": ("hard sharing + dynamic weight averaging (windows of 50 steps, T = 2)",
            ["LossConfig.task_weighting = 'dwa'", "LossConfig.dwa_window = 50"]),
}


def _train(run_dir: str, bindings: list[str], fresh: bool) -> float:
  """Trains one run (skipped when it already has its final evaluation); returns
  the wall time in seconds (0 when skipped)."""
  if not fresh and _eval(run_dir):
    return 0.0
  if os.path.isdir(run_dir):
    subprocess.run(["rm", "-rf", run_dir], check=True)
  cmd = [sys.executable, "-m", "t5jax.cli", "train", f"--gin_file={BASE_GIN}",
         f"--run_dir={run_dir}"] + [f"--gin.{b.replace(' = ', '=', 1)}" for b in bindings]
  print("$ " + " ".join(cmd), flush=True)
  start = time.time()
  subprocess.run(cmd, check=True)
  seconds = time.time() - start
  with open(os.path.join(run_dir, "wall_seconds.json"), "w") as f:
    json.dump({"seconds": seconds, "command": cmd[1:]}, f)
  return seconds


def _records(run_dir: str) -> list[dict]:
  path = os.path.join(run_dir, "metrics.jsonl")
  if not os.path.isfile(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def _eval(run_dir: str) -> dict:
  evals = [r for r in _records(run_dir) if r["split"] == "eval"]
  return evals[-1] if evals else {}


def _seconds(run_dir: str) -> float:
  with open(os.path.join(run_dir, "wall_seconds.json")) as f:
    return json.load(f)["seconds"]


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
    train = [r for r in _records(run_dir) if r["split"] == "train"]
    results[name] = {
        "eval": _eval(run_dir), "seconds": _seconds(run_dir), "steps": args.steps,
        "curves": {t: [(r["step"], r[f"tasks/{t}/loss"]) for r in train
                       if f"tasks/{t}/loss" in r] for t in TASKS}}
  per_task = {"eval": {}, "seconds": 0.0, "steps": 0, "curves": {}, "task_steps": {}}
  for task, steps in _task_steps(args.steps, args.min_task_steps).items():
    run_dir = os.path.join(args.out, f"single_{task}")
    _train(run_dir, _schedule(steps, args.steps) + [
        f"InputSpec.mixture_or_task = '{task}'",
        f"EvalConfig.max_examples = {args.eval_examples}"], args.fresh)
    per_task["eval"].update({k: v for k, v in _eval(run_dir).items() if k.startswith(task + "/")})
    per_task["seconds"] += _seconds(run_dir)
    per_task["steps"] += steps
    per_task["task_steps"][task] = steps
    # On the budget axis: step s of a task's own run is where the multi-task runs
    # have seen as many of its examples.
    scale = args.steps / steps
    per_task["curves"][task] = [(r["step"] * scale, r[f"tasks/{task}/loss"])
                                for r in _records(run_dir)
                                if r["split"] == "train" and f"tasks/{task}/loss" in r]
  results["per_task"] = per_task
  return results


COLUMNS = ("per_task", "hard", "soft", "adapters", "uncertainty", "dwa")
LABELS = {"per_task": "one model per task", "hard": "hard", "soft": "soft",
          "adapters": "adapters", "uncertainty": "uncertainty", "dwa": "DWA"}


def table(results: dict) -> str:
  head = "| task (metric) | " + " | ".join(LABELS[c] for c in COLUMNS) + " |"
  lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
  for task in TASKS:
    metric = PRIMARY_METRIC[task]
    cells = []
    for c in COLUMNS:
      ev = results[c]["eval"]
      value, loss = ev.get(f"{task}/{metric}"), ev.get(f"{task}/loss")
      cells.append("n/a" if value is None else f"{value:.1f} ({loss:.2f})")
    lines.append(f"| {task} ({metric}) | " + " | ".join(cells) + " |")
  mean_loss = [np.mean([results[c]["eval"][f"{t}/loss"] for t in TASKS]) for c in COLUMNS]
  lines.append("| mean eval loss | " + " | ".join(f"{x:.3f}" for x in mean_loss) + " |")
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


START, END = "<!-- table:start -->", "<!-- table:end -->"


def write_table(path: str, text: str, command: str) -> None:
  """Puts the table between the markers of `path` (created when missing)."""
  block = f"{START}\n<!-- written by: {command} -->\n{text}\n{END}"
  doc = open(path, encoding="utf-8").read() if os.path.isfile(path) else f"{START}\n{END}\n"
  if START not in doc or END not in doc:
    doc += f"\n{START}\n{END}\n"
  head, rest = doc.split(START, 1)
  with open(path, "w", encoding="utf-8") as f:
    f.write(head + block + rest.split(END, 1)[1])


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=600)
  parser.add_argument("--eval_examples", type=int, default=64)
  parser.add_argument("--min_task_steps", type=int, default=10)
  parser.add_argument("--out", default="benchmarks/results/multitask")
  parser.add_argument("--docs", default="docs")
  parser.add_argument("--fresh", action="store_true", help="retrain runs that finished")
  args = parser.parse_args(argv)
  results = run(args)
  plot(results, os.path.join(args.docs, "experiments_task_losses.png"))
  summary = {c: {k: v for k, v in results[c].items() if k != "curves"} for c in COLUMNS}
  with open(os.path.join(args.out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
  text = table(results)
  command = "python benchmarks/multitask_experiment.py " + " ".join(
      sys.argv[1:] if argv is None else argv)
  write_table(os.path.join(args.docs, "experiments.md"), text, command.strip())
  print(text)


if __name__ == "__main__":
  main()
