"""Early stopping: a run ends once its evaluation metric (CheckpointConfig.best_metric, e.g.
"glue_mix/average" or "multi30k_en_fr/loss" with best_mode "min") has not improved for
`patience` evaluations in a row. The count is saved in every checkpoint's metadata, so a
resumed run goes on counting where it stopped."""

from __future__ import annotations

import dataclasses
import difflib


@dataclasses.dataclass
class Patience:
  """The best value of `metric` so far, at which step, and the evaluations since."""
  metric: str
  mode: str  # "max" or "min"
  patience: int  # 0: never stop early (the best value is still tracked and checked)
  best: float | None = None
  best_step: int | None = None
  evals_since_best: int = 0

  @classmethod
  def resume(cls, metric: str, mode: str, patience: int, saved: dict | None) -> "Patience":
    """A fresh count, or the one a checkpoint's metadata saved (meta["early_stopping"])."""
    fresh = cls(metric, mode, patience)
    if saved and saved.get("metric") == metric and saved.get("mode") == mode:
      fresh.best, fresh.best_step = saved.get("best"), saved.get("best_step")
      fresh.evals_since_best = int(saved.get("evals_since_best", 0))
    return fresh

  def state(self) -> dict:
    """What a checkpoint's metadata keeps of it."""
    return {"metric": self.metric, "mode": self.mode, "best": self.best,
            "best_step": self.best_step, "evals_since_best": self.evals_since_best}

  def update(self, step: int, eval_metrics: dict) -> bool:
    """Counts one evaluation; True when the run should stop.

    Raises:
      ValueError: the evaluation has no such metric (one line, with the closest names).
    """
    if self.metric not in eval_metrics:
      close = difflib.get_close_matches(self.metric, list(eval_metrics), n=3, cutoff=0.5)
      hint = f"did you mean {', '.join(close)}?" if close else (
          f"it has {', '.join(sorted(eval_metrics)[:8])}, ...")
      raise ValueError(f"CheckpointConfig.best_metric={self.metric!r} is not a metric of "
                       f"this run's evaluation; {hint}")
    value = float(eval_metrics[self.metric])
    better = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
    if better:
      self.best, self.best_step, self.evals_since_best = value, step, 0
    else:
      self.evals_since_best += 1
    return bool(self.patience) and self.evals_since_best >= self.patience

  def reason(self, step: int) -> str:
    return (f"Early stopping at step {step}: {self.metric} has not improved for "
            f"{self.evals_since_best} evaluations (best {self.best:.6g} at step "
            f"{self.best_step}, kept as the best checkpoint).")
