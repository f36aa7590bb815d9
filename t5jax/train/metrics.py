"""Training metrics: window averages, per-task figures, JSONL, TensorBoard, progress line."""

from __future__ import annotations

import json
import sys
import time

import numpy as np

from t5jax import fs
from t5jax.train import events


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def summarize(step_metrics: list[dict], task_names: list[str], seconds: float) -> dict:
  """Averages a window of per-step device metrics (already on the host).

  Scalars are averaged over steps; per-task figures are ratios of the window's
  sums, so a task that appears in few tokens is not over-weighted. Dynamic task
  weights (`task_weight_k`, `log_var_k`) are averaged over the window's steps.
  """
  out = {}
  scalars = [k for k, v in step_metrics[0].items() if np.ndim(v) == 0]
  for k in scalars:
    out[k] = float(np.mean([m[k] for m in step_metrics]))
  sums = {k: np.sum([m[k] for m in step_metrics], axis=0)
          for k in ("tokens_k", "loss_sum_k", "correct_k", "contribution_k")}
  for i, name in enumerate(task_names):
    tokens = float(sums["tokens_k"][i])
    out[f"tasks/{name}/target_tokens"] = tokens / len(step_metrics)
    if tokens > 0:
      out[f"tasks/{name}/loss"] = float(sums["loss_sum_k"][i]) / tokens
      out[f"tasks/{name}/accuracy"] = float(sums["correct_k"][i]) / tokens
    out[f"tasks/{name}/loss_contribution"] = float(sums["contribution_k"][i]) / len(step_metrics)
  for key, field in (("task_weight_k", "weight"), ("log_var_k", "log_var")):
    if key in step_metrics[0]:
      mean_k = np.mean([m[key] for m in step_metrics], axis=0)
      for i, name in enumerate(task_names):
        out[f"tasks/{name}/{field}"] = float(mean_k[i])
  out["target_tokens_per_s"] = float(np.sum([m["target_tokens"] for m in step_metrics])) / max(seconds, 1e-9)
  out["steps_per_s"] = len(step_metrics) / max(seconds, 1e-9)
  return out


def progress_line(step: int, num_steps: int, summary: dict, task_names: list[str],
                  eta_s: float) -> str:
  def task(n):  # loss, and the weight in use under dynamic task weighting
    weight = summary.get(f"tasks/{n}/weight")
    return f"{n}={summary[f'tasks/{n}/loss']:.3f}" + (f"(w{weight:.2f})" if weight else "")
  tasks = " ".join(task(n) for n in task_names if f"tasks/{n}/loss" in summary)
  return (f"step {step}/{num_steps} | loss {summary['loss']:.4f} | acc {summary['accuracy']:.3f}"
          f" | {tasks} | lr {summary['learning_rate']:.2e} | gnorm {summary['grad_norm']:.2f}"
          f" | {summary['target_tokens_per_s']:,.0f} tgt tok/s | ETA {format_duration(eta_s)}")


class MetricsWriter:
  """Appends metrics to RUN_DIR/metrics.jsonl and TensorBoard events in RUN_DIR/tb, on local
  disk or in a bucket (gs://).

  Each `write` appends its JSON line and its events at once (in a bucket, one composed
  object each: GCS objects cannot be appended to), so a run killed mid-write loses at most
  that logging window. Only the primary process writes; on the others every call is a no-op.
  """

  def __init__(self, run_dir: str, enabled: bool = True):
    self.enabled = enabled
    if not enabled:
      return
    self.path = fs.join(run_dir, "metrics.jsonl")
    self._events = events.EventsFile(fs.join(run_dir, "tb"))

  def write(self, step: int, scalars: dict, prefix: str = "train") -> None:
    """Appends one record: `{"step", "split": prefix, "time", **scalars}`.

    Raises:
      fs.StorageError: the run directory cannot be written (after retries).
    """
    if not self.enabled:
      return
    record = {"step": int(step), "split": prefix, "time": time.time(), **scalars}
    fs.append_text(self.path, json.dumps(record) + "\n")
    self._events.add_scalars(step, {f"{prefix}/{k}": v for k, v in scalars.items()})

  def close(self) -> None:
    """Nothing is buffered: every write is already where it belongs."""


def print_line(line: str, enabled: bool = True) -> None:
  if enabled:
    print(line, file=sys.stdout, flush=True)
