"""Full fine-tuning vs LoRA vs per-task LoRA vs prompt tuning, same steps, from one base.

The base is the demo's model (runs/demo.gin: t5_1_0_mini, 500 steps on English->German
and English->French). Each variant fine-tunes it on the shipped supervised mixture (9
tasks, examples-proportional rates) for --steps steps of 32 rows (128 input / 32 target
tokens), then is evaluated on the first --eval_examples validation examples of every
task (greedy decoding, each task's SeqIO metric):

- full: runs/finetune.gin (Adafactor 1e-3, dropout 0.1), every parameter trained;
- lora: + runs/lora.gin (rank 8 on q and v, alpha 32, AdamW 1e-3), one LoRA shared;
- lora_per_task: the same with a LoRA per task (PeftConfig.per_task, 9 task slots);
- prompt: + runs/prompt_tuning.gin (20 vectors, AdamW 0.03; rows unpacked).

  python benchmarks/peft_experiment.py --steps 300 --out benchmarks/results/peft

writes the table into docs/experiments.md (between its peft markers). Finished runs
are reused (--fresh retrains).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from multitask_experiment import PRIMARY_METRIC, TASKS  # noqa: E402

FINETUNE = ["InputSpec.mixture_or_task='supervised_mix'", "InputSpec.inputs_length=128",
            "InputSpec.targets_length=32", "TrainConfig.batch_size=32",
            "TrainConfig.num_sample_predictions=0"]
SLOTS = "(" + ", ".join(f"'{t}'" for t in TASKS) + ",)"
VARIANTS = {
    "full": ("full fine-tuning", ["runs/finetune.gin"], []),
    "lora": ("LoRA r=8 on q, v (one for all tasks)", ["runs/finetune.gin", "runs/lora.gin"], []),
    "lora_per_task": ("LoRA r=8 on q, v, one per task",
                      ["runs/finetune.gin", "runs/lora.gin"],
                      ["PeftConfig.per_task=True",
                       "TrainConfig.model_overrides={'dtype': 'float32', 'dropout_rate': 0.1, "
                       f"'task_slots': {SLOTS}}}"]),
    "prompt": ("prompt tuning, 20 vectors", ["runs/finetune.gin", "runs/prompt_tuning.gin"], []),
}
MARKERS = ("<!-- peft:start -->", "<!-- peft:end -->")


def _t5jax(args: list[str]) -> None:
  print("$ t5jax " + " ".join(args), flush=True)
  subprocess.run([sys.executable, "-m", "t5jax", *args], check=True, cwd=REPO)


def _records(run_dir: str) -> list[dict]:
  path = os.path.join(run_dir, "metrics.jsonl")
  if not os.path.isfile(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def _eval(run_dir: str) -> dict:
  evals = [r for r in _records(run_dir) if r["split"] == "eval"]
  return evals[-1] if evals else {}


def _trainable(run_dir: str) -> tuple[int, int]:
  """(trainable, total) parameter counts of a run's model."""
  import jax
  from t5jax import checkpoint
  from t5jax.model import param_tree, peft, t5, trainable
  cfg = checkpoint.model_config_from_meta(checkpoint.read_meta(run_dir))
  abstract = param_tree.abstract_params(t5.Transformer(cfg))
  total = sum(x.size for x in jax.tree.leaves(abstract))
  if not cfg.peft:
    return total, total
  trained = trainable.parts(abstract, peft.trainable_pattern(cfg))[0]
  return sum(x.size for x in jax.tree.leaves(trained)), total


def run(args) -> dict:
  base = os.path.join(args.out, "base")
  if not os.path.isdir(os.path.join(base, "checkpoints")) or args.fresh:
    _t5jax(["train", "--gin_file=runs/demo.gin", f"--run_dir={base}",
            "--gin.TrainConfig.num_sample_predictions=0"])
  results = {}
  for name, (_, gin_files, bindings) in VARIANTS.items():
    run_dir = os.path.join(args.out, name)
    if args.fresh or not _eval(run_dir):
      subprocess.run(["rm", "-rf", run_dir], check=True)
      start = time.time()
      _t5jax(["train", *[f"--gin_file={g}" for g in gin_files], f"--init_from={base}",
              f"--run_dir={run_dir}",
              *[f"--gin.{b}" for b in FINETUNE + bindings + [
                  f"TrainConfig.num_steps={args.steps}", f"EvalConfig.every_steps={args.steps}",
                  f"EvalConfig.max_examples={args.eval_examples}",
                  "EvalConfig.inputs_length=128", "EvalConfig.targets_length=32",
                  f"CheckpointConfig.every_steps={args.steps}"]]])
      with open(os.path.join(run_dir, "wall_seconds.json"), "w") as f:
        json.dump({"seconds": time.time() - start}, f)
    with open(os.path.join(run_dir, "wall_seconds.json")) as f:
      seconds = json.load(f)["seconds"]
    ckpt_bytes = sum(os.path.getsize(os.path.join(d, x))
                     for d, _, xs in os.walk(os.path.join(run_dir, "checkpoints")) for x in xs)
    results[name] = {"eval": _eval(run_dir), "seconds": seconds,
                     "trainable": _trainable(run_dir), "checkpoint_bytes": ckpt_bytes}
  return results


def table(results: dict, steps: int, examples: int) -> str:
  names = list(VARIANTS)
  lines = [MARKERS[0],
           f"<!-- written by: python benchmarks/peft_experiment.py --steps {steps} "
           f"--eval_examples {examples} --out benchmarks/results/peft -->",
           "| task (metric) | " + " | ".join(VARIANTS[n][0] for n in names) + " |",
           "|" + "---|" * (len(names) + 1)]
  for task in TASKS:
    metric = PRIMARY_METRIC[task]
    cells = []
    for n in names:
      ev = results[n]["eval"]
      value, loss = ev.get(f"{task}/{metric}"), ev.get(f"{task}/loss")
      cells.append("n/a" if value is None else f"{value:.1f} ({loss:.2f})")
    lines.append(f"| {task} ({metric}) | " + " | ".join(cells) + " |")
  mean_loss = [np.mean([results[n]["eval"][f"{t}/loss"] for t in TASKS]) for n in names]
  lines.append("| mean eval loss | " + " | ".join(f"{x:.3f}" for x in mean_loss) + " |")
  lines.append("| trainable parameters | " + " | ".join(
      f"{results[n]['trainable'][0]:,} ({results[n]['trainable'][0] / results[n]['trainable'][1]:.2%})"
      for n in names) + " |")
  lines.append("| checkpoints on disk | " + " | ".join(
      f"{results[n]['checkpoint_bytes'] / 2**20:.1f} MiB" for n in names) + " |")
  lines.append("| wall time on this machine | " + " | ".join(
      f"{results[n]['seconds'] / 60:.1f} min" for n in names) + " |")
  lines.append(MARKERS[1])
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--eval_examples", type=int, default=64)
  parser.add_argument("--out", default="benchmarks/results/peft")
  parser.add_argument("--fresh", action="store_true")
  parser.add_argument("--doc", default=str(REPO / "docs" / "experiments.md"))
  args = parser.parse_args()
  results = run(args)
  with open(os.path.join(args.out, "summary.json"), "w") as f:
    json.dump(results, f, indent=1)
  text = table(results, args.steps, args.eval_examples)
  print(text)
  doc = pathlib.Path(args.doc).read_text()
  if MARKERS[0] in doc:
    head, rest = doc.split(MARKERS[0], 1)
    doc = head + text + rest.split(MARKERS[1], 1)[1]
    pathlib.Path(args.doc).write_text(doc)


if __name__ == "__main__":
  main()
