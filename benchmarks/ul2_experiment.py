"""Span corruption vs UL2 from the same start, same compute, on the shipped text; then
both fine-tuned on the shipped supervised mixture.

Both pretrain t5_1_0_mini from the same initialisation (seed 0) for --steps steps of
--batch rows of 512 / 512 tokens (one example a row for both objectives, so the same
shapes and FLOPs a step), Adafactor at 0.01. Each pretrained model is then
(1) scored on held-out denoising: the teacher-forced validation loss of both objectives'
validation examples (`t5jax eval`-style, through the batch pipeline), and
(2) fine-tuned like benchmarks/peft_experiment.py's "full" variant (runs/finetune.gin on
supervised_mix, --finetune_steps steps) and evaluated per task.

  python benchmarks/ul2_experiment.py --steps 200 --batch 8 --out benchmarks/results/ul2

writes the table into docs/experiments.md (between its ul2 markers). Finished runs are
reused (--fresh retrains).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess

import numpy as np

# Beside this script in benchmarks/.
from experiment_runs import final_eval, run_t5jax, train_once, write_table
from multitask_experiment import PRIMARY_METRIC, TASKS
from peft_experiment import finetune_flags

REPO = pathlib.Path(__file__).resolve().parents[1]

OBJECTIVES = {"span_corruption": "text_span_corruption", "ul2": "text_ul2"}
MARKERS = ("<!-- ul2:start -->", "<!-- ul2:end -->")


def pretrain(args, name: str, task: str) -> str:
  run_dir = os.path.join(args.out, f"pretrain_{name}")
  if args.fresh or not os.path.isdir(os.path.join(run_dir, "checkpoints")):
    subprocess.run(["rm", "-rf", run_dir], check=True)
    run_t5jax(["train", "--gin_file=runs/pretrain.gin", "--gin_file=models/t5_1_0_mini.gin",
               f"--run_dir={run_dir}", f"--gin.InputSpec.mixture_or_task='{task}'",
               "--gin.InputSpec.inputs_length=512", "--gin.InputSpec.targets_length=512",
               f"--gin.TrainConfig.batch_size={args.batch}",
               f"--gin.TrainConfig.num_steps={args.steps}", "--gin.TrainConfig.log_every=10",
               "--gin.TrainConfig.num_sample_predictions=0",
               "--gin.ModelSettings.dtype='float32'", "--gin.ModelSettings.dropout_rate=0.0",
               "--gin.OptimizerConfig.decay_start=100", "--gin.OptimizerConfig.warmup_steps=10",
               f"--gin.CheckpointConfig.every_steps={args.steps}"])
  return run_dir


def denoising_loss(run_dir: str, task: str, rows: int) -> float:
  """Mean teacher-forced loss per target token over `rows` validation rows of `task`."""
  from t5jax.data import pipeline
  from t5jax.decode.predictor import Predictor
  predictor = Predictor.from_checkpoint(run_dir)
  spec = pipeline.InputSpec(mixture_or_task=task, split="validation", inputs_length=512,
                            targets_length=512, pack=False, shuffle=False)
  batches = pipeline.make_batches(spec, 8, 0, 1)
  loglik = tokens = 0.0
  for _ in range(rows // 8):
    b = next(batches)
    targets = b["decoder_target_tokens"]
    loglik += float(np.sum(predictor.log_likelihood_tokens(b["encoder_input_tokens"], targets)))
    tokens += float(np.sum(targets > 0))
  return -loglik / tokens


def finetune(args, name: str, base: str) -> str:
  """`base` fine-tuned as benchmarks/peft_experiment.py's full variant."""
  run_dir = os.path.join(args.out, f"finetune_{name}")
  train_once(run_dir, ["--gin_file=runs/finetune.gin", f"--init_from={base}",
                       *finetune_flags(args.finetune_steps, args.eval_examples)], args.fresh)
  return run_dir


def table(results: dict) -> str:
  names = list(OBJECTIVES)
  lines = ["| | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
  for task in OBJECTIVES.values():
    lines.append(f"| held-out {task} loss | " + " | ".join(
        f"{results[n]['denoising'][task]:.3f}" for n in names) + " |")
  for task in TASKS:
    metric = PRIMARY_METRIC[task]
    lines.append(f"| fine-tuned {task} ({metric}) | " + " | ".join(
        f"{results[n]['finetuned'].get(f'{task}/{metric}', float('nan')):.1f}" for n in names)
        + " |")
  lines.append("| fine-tuned mean eval loss | " + " | ".join(
      f"{np.mean([results[n]['finetuned'][f'{t}/loss'] for t in TASKS]):.3f}" for n in names)
      + " |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--finetune_steps", type=int, default=300)
  parser.add_argument("--eval_examples", type=int, default=64)
  parser.add_argument("--denoising_rows", type=int, default=64)
  parser.add_argument("--out", default="benchmarks/results/ul2")
  parser.add_argument("--fresh", action="store_true")
  parser.add_argument("--doc", default=str(REPO / "docs" / "experiments.md"))
  args = parser.parse_args()
  results = {}
  for name, task in OBJECTIVES.items():
    base = pretrain(args, name, task)
    results[name] = {
        "denoising": {t: denoising_loss(base, t, args.denoising_rows)
                      for t in OBJECTIVES.values()},
        "finetuned": final_eval(finetune(args, name, base))}
  with open(os.path.join(args.out, "summary.json"), "w") as f:
    json.dump(results, f, indent=1)
  text = table(results)
  print(text)
  command = (f"python benchmarks/ul2_experiment.py --steps {args.steps} --batch {args.batch} "
             f"--finetune_steps {args.finetune_steps} --out {args.out}")
  write_table(args.doc, text, command, *MARKERS)


if __name__ == "__main__":
  main()
