"""`t5jax plot RUN_DIR`: per-task training (and evaluation) loss curves as a PNG."""

from __future__ import annotations

import io
import json

from t5jax import fs


def read_metrics(run_dir: str) -> list[dict]:
  """metrics.jsonl records (local or gs://); for a resumed run, the last record of each
  (split, step)."""
  path = fs.join(run_dir, "metrics.jsonl")
  if not fs.isfile(path):
    raise FileNotFoundError(f"{path} does not exist; is {run_dir} a t5jax run directory?")
  latest = {}
  for line in fs.read_text(path).splitlines():
    if line.strip():
      record = json.loads(line)
      latest[(record.get("split", "train"), record["step"])] = record
  return [latest[k] for k in sorted(latest, key=lambda k: (k[0], k[1]))]


def plot_run(run_dir: str, output: str | None = None) -> str:
  """Draws total and per-task loss against step; returns the PNG's path."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  records = read_metrics(run_dir)
  train = [r for r in records if r.get("split", "train") == "train"]
  evals = [r for r in records if r.get("split") == "eval"]
  tasks = sorted({k.split("/")[1] for r in train for k in r if k.startswith("tasks/")
                  and k.endswith("/loss")})
  fig, axes = plt.subplots(1, 2 if evals else 1, figsize=(12 if evals else 7, 4.5),
                           squeeze=False)
  ax = axes[0][0]
  steps = [r["step"] for r in train]
  ax.plot(steps, [r["loss"] for r in train], color="black", linewidth=2, label="total (weighted)")
  for task in tasks:
    points = [(r["step"], r[f"tasks/{task}/loss"]) for r in train if f"tasks/{task}/loss" in r]
    ax.plot([p[0] for p in points], [p[1] for p in points], label=task)
  ax.set(xlabel="step", ylabel="training loss per target token", title="training loss by task")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  if evals:
    ax = axes[0][1]
    eval_tasks = sorted({k.split("/")[0] for r in evals for k in r if k.endswith("/loss")})
    for task in eval_tasks:
      points = [(r["step"], r[f"{task}/loss"]) for r in evals if f"{task}/loss" in r]
      ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=task)
    ax.set(xlabel="step", ylabel="teacher-forced loss", title="evaluation loss by task")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle(fs.basename(run_dir))
  fig.tight_layout()
  output = output or fs.join(run_dir, "loss_by_task.png")
  png = io.BytesIO()
  fig.savefig(png, format="png", dpi=110)
  plt.close(fig)
  fs.write_bytes(output, png.getvalue())
  return output
