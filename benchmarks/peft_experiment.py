"""Full fine-tuning vs LoRA vs per-task LoRA vs prompt tuning, same steps, from one base.

The base is the demo's model (runs/demo.gin: t5_1_0_mini, 500 steps on English->German
and English->French). Each variant fine-tunes it on the shipped supervised mixture (9
tasks, examples-proportional rates) for --steps steps of 32 rows (128 input / 32 target
tokens), then is evaluated on the first --eval_examples validation examples of every
task (greedy decoding, each task's SeqIO metric):

- full: runs/finetune.gin (Adafactor 1e-3, dropout 0.1), every parameter trained;
- lora: + runs/lora.gin (rank 8 on q and v, alpha 32, AdamW 1e-3), one LoRA shared;
- lora_per_task: the same with a LoRA per task (PeftConfig.per_task, 9 task slots);
- lora_lr3e-3, lora_per_task_lr3e-3: both at AdamW 3e-3 (LoRA is usually trained at a
  higher rate than full fine-tuning);
- lora_all_r2: one shared LoRA of about the same size on every projection (rank 2 on q, k,
  v, o, wi, wo; QLoRA found adapting every layer is what matches full fine-tuning);
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

# Beside this script in benchmarks/.
from experiment_runs import final_eval, run_t5jax, train_once, wall_seconds, write_table
from multitask_experiment import TASKS, task_rows

REPO = pathlib.Path(__file__).resolve().parents[1]

FINETUNE = ["InputSpec.mixture_or_task='supervised_mix'", "InputSpec.inputs_length=128",
            "InputSpec.targets_length=32", "TrainConfig.batch_size=32",
            "TrainConfig.num_sample_predictions=0"]
SLOTS = "(" + ", ".join(f"'{t}'" for t in TASKS) + ",)"
VARIANTS = {
    "full": ("full fine-tuning", ["runs/finetune.gin"], []),
    "lora": ("LoRA r=8 on q, v (one for all tasks)", ["runs/finetune.gin", "runs/lora.gin"], []),
    "lora_per_task": ("LoRA r=8 on q, v, one per task",
                      ["runs/finetune.gin", "runs/lora.gin"],
                      ["PeftConfig.per_task=True", f"ModelSettings.task_slots={SLOTS}"]),
    "lora_lr3e-3": ("LoRA as above, AdamW 3e-3 (one for all tasks)",
                    ["runs/finetune.gin", "runs/lora.gin"], ["OptimizerConfig.learning_rate=0.003"]),
    "lora_per_task_lr3e-3": ("LoRA per task, AdamW 3e-3", ["runs/finetune.gin", "runs/lora.gin"],
                             ["OptimizerConfig.learning_rate=0.003", "PeftConfig.per_task=True",
                              f"ModelSettings.task_slots={SLOTS}"]),
    "lora_all_r2": ("LoRA r=2 on every projection (q, k, v, o, wi, wo), AdamW 3e-3, one "
                    "for all tasks", ["runs/finetune.gin", "runs/lora.gin"],
                    ["OptimizerConfig.learning_rate=0.003", "PeftConfig.lora_rank=2",
                     "PeftConfig.lora_targets=('q', 'k', 'v', 'o', 'wi', 'wo')"]),
    "prompt": ("prompt tuning, 20 vectors", ["runs/finetune.gin", "runs/prompt_tuning.gin"], []),
}
MARKERS = ("<!-- peft:start -->", "<!-- peft:end -->")


def finetune_flags(steps: int, eval_examples: int) -> list[str]:
  """The fine-tuning run's flags beside its gin files: the supervised mixture, `steps`
  steps, one evaluation of `eval_examples` examples a task at the end."""
  return [f"--gin.{b}" for b in FINETUNE + [
      f"TrainConfig.num_steps={steps}", f"EvalConfig.every_steps={steps}",
      f"EvalConfig.max_examples={eval_examples}", "EvalConfig.inputs_length=128",
      "EvalConfig.targets_length=32", f"CheckpointConfig.every_steps={steps}"]]


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
    run_t5jax(["train", "--gin_file=runs/demo.gin", f"--run_dir={base}",
               "--gin.TrainConfig.num_sample_predictions=0"])
  results = {}
  for name, (_, gin_files, bindings) in VARIANTS.items():
    run_dir = os.path.join(args.out, name)
    train_once(run_dir, [*[f"--gin_file={g}" for g in gin_files], f"--init_from={base}",
                         *finetune_flags(args.steps, args.eval_examples),
                         *[f"--gin.{b}" for b in bindings]], args.fresh)
    ckpt_bytes = sum(os.path.getsize(os.path.join(d, x))
                     for d, _, xs in os.walk(os.path.join(run_dir, "checkpoints")) for x in xs)
    results[name] = {"eval": final_eval(run_dir), "seconds": wall_seconds(run_dir),
                     "trainable": _trainable(run_dir), "checkpoint_bytes": ckpt_bytes}
  return results


def table(results: dict) -> str:
  names = list(VARIANTS)
  lines = task_rows([VARIANTS[n][0] for n in names], [results[n]["eval"] for n in names])
  lines.append("| trainable parameters | " + " | ".join(
      f"{trained:,} ({trained / total:.2%})"
      for trained, total in (results[n]["trainable"] for n in names)) + " |")
  lines.append("| checkpoints on disk | " + " | ".join(
      f"{results[n]['checkpoint_bytes'] / 2**20:.1f} MiB" for n in names) + " |")
  lines.append("| wall time on this machine | " + " | ".join(
      f"{results[n]['seconds'] / 60:.1f} min" for n in names) + " |")
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
  text = table(results)
  print(text)
  command = (f"python benchmarks/peft_experiment.py --steps {args.steps} --eval_examples "
             f"{args.eval_examples} --out {args.out}")
  write_table(args.doc, text, command, *MARKERS)


if __name__ == "__main__":
  main()
