"""What the experiment scripts (multitask_experiment.py, peft_experiment.py,
ul2_experiment.py) share: train a run once (reused when it finished), read its logged
records and final evaluation, and put a table between the markers of a doc."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def run_t5jax(args: list[str]) -> None:
  """`t5jax ARGS` in a child process (from the current directory), echoed first."""
  cmd = [sys.executable, "-m", "t5jax", *args]
  print("$ " + " ".join(cmd), flush=True)
  subprocess.run(cmd, check=True)


def records(run_dir: str) -> list[dict]:
  """The run's metrics.jsonl records ([] before it logged any)."""
  path = os.path.join(run_dir, "metrics.jsonl")
  if not os.path.isfile(path):
    return []
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def final_eval(run_dir: str) -> dict:
  """The run's last evaluation record ({} when it has none)."""
  evals = [r for r in records(run_dir) if r["split"] == "eval"]
  return evals[-1] if evals else {}


def train_once(run_dir: str, train_args: list[str], fresh: bool) -> float:
  """`t5jax train --run_dir=RUN_DIR TRAIN_ARGS`, unless the run already has its final
  evaluation (and not `fresh`); returns the wall seconds (0 when reused), also kept in
  RUN_DIR/wall_seconds.json."""
  if not fresh and final_eval(run_dir):
    return 0.0
  if os.path.isdir(run_dir):
    subprocess.run(["rm", "-rf", run_dir], check=True)
  args = ["train", f"--run_dir={run_dir}", *train_args]
  start = time.time()
  run_t5jax(args)
  seconds = time.time() - start
  with open(os.path.join(run_dir, "wall_seconds.json"), "w") as f:
    json.dump({"seconds": seconds, "command": ["-m", "t5jax", *args]}, f)
  return seconds


def wall_seconds(run_dir: str) -> float:
  with open(os.path.join(run_dir, "wall_seconds.json")) as f:
    return json.load(f)["seconds"]


def write_table(path: str, text: str, command: str, start: str, end: str) -> None:
  """Puts the table between the markers of `path` (created when missing)."""
  block = f"{start}\n<!-- written by: {command} -->\n{text}\n{end}"
  doc = open(path, encoding="utf-8").read() if os.path.isfile(path) else f"{start}\n{end}\n"
  if start not in doc or end not in doc:
    doc += f"\n{start}\n{end}\n"
  head, rest = doc.split(start, 1)
  with open(path, "w", encoding="utf-8") as f:
    f.write(head + block + rest.split(end, 1)[1])
