"""The recipes table: for each T5 size, `t5jax compile --topology TYPE --fit` on pretraining
and fine-tuning at T5's batch, and XLA:CPU's estimate of the same chosen step beside it.

    python benchmarks/fit_recipes.py --out benchmarks/results/fit_recipes.jsonl \\
        --case t5_1_1_small:pretrain:v5p-8 --case t5_1_1_base:finetune:v5p-8 --cpu \\
        --recipes gin_configs/recipes

With --recipes and no --case, it writes the recipes and the table of what --out holds.

Each case is MODEL:RUN:TYPE. RUN `pretrain` is runs/pretrain.gin (batch 128, 512/114,
bf16, no dropout); `finetune` is runs/finetune.gin at T5's fine-tuning batch (128,
512/114) with its dropout of 0.1, in bf16 (not the CPU demo's float32 it inherits).
Searches run one process at a time; their compile reports are cached
(~/.cache/t5jax/compile_reports, or $T5JAX_COMPILE_CACHE), so a rerun only compiles what
is new. One JSON line per case, and a markdown table at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
RUNS = {
    "pretrain": ["--gin_file=runs/pretrain.gin"],
    "finetune": ["--gin_file=runs/finetune.gin", "--gin.TrainConfig.batch_size=128",
                 "--gin.InputSpec.inputs_length=512", "--gin.InputSpec.targets_length=114",
                 "--gin.ModelSettings.dtype='bfloat16'"],
}
# Why a recipe binds what it does where the run's gin files say otherwise: written above
# the binding.
NOTES = {
    "ModelSettings.dtype = 'bfloat16'": (
        "# bfloat16 activations, as `--fit` compiled this run (the peak above is theirs); without\n"
        "# this line runs/finetune.gin's float32, meant for the CPU demo, would apply."),
}


def _t5jax(args: list[str], extra_env: dict | None = None) -> subprocess.CompletedProcess:
  env = {**os.environ, "PYTHONPATH": str(REPO), **(extra_env or {})}
  for name in ("XLA_FLAGS", "JAX_PLATFORMS"):
    env.pop(name, None)
  return subprocess.run([sys.executable, "-m", "t5jax", "compile", *args], env=env,
                        capture_output=True, text=True, cwd=str(REPO))


def run_case(model: str, run: str, accelerator_type: str, compiles: int, cpu: bool) -> dict:
  gin = [*RUNS[run], f"--gin_file=models/{model}.gin", "--gin_file=mesh/fsdp.gin"]
  start = time.time()
  result = _t5jax(["--topology", accelerator_type, "--fit", f"--fit_compiles={compiles}", *gin])
  if result.returncode:
    raise RuntimeError(f"{model} {run}: {result.stderr[-2000:]}")
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  row = {"model": model, "run": run, "accelerator_type": accelerator_type,
         "search_wall_s": round(time.time() - start, 1), **summary}
  if cpu and summary["fit"]:
    from t5jax.parallel import topology  # pylint: disable=g-import-not-at-top
    chips = topology.slice_of(accelerator_type).chips
    bindings = [b.replace('"', "") for b in summary["gin_bindings"]]
    cpu_result = _t5jax(["--devices", str(chips), *gin, *bindings])
    row["cpu"] = (json.loads(cpu_result.stdout.strip().splitlines()[-1])
                  if cpu_result.returncode == 0 else {"error": cpu_result.stderr[-500:]})
  return row


def latest(path: str) -> list[dict]:
  """The rows of a results file, the last one of each case (model, run, type) only."""
  rows = {}
  with open(path, encoding="utf-8") as f:
    for line in f:
      if line.strip():
        row = json.loads(line)
        rows[(row["model"], row["run"], row["accelerator_type"])] = row
  return list(rows.values())


def case_config(model: str, run: str):
  """(the case's TrainConfig before the setting, its gin files, its other bindings)."""
  import gin  # pylint: disable=g-import-not-at-top
  from t5jax import config  # pylint: disable=g-import-not-at-top
  from t5jax.train import run_config  # pylint: disable=g-import-not-at-top
  gin_files = [a.removeprefix("--gin_file=") for a in RUNS[run] if a.startswith("--gin_file=")]
  gin_files += [f"models/{model}.gin", "mesh/fsdp.gin"]
  extra = [a.removeprefix("--gin.") for a in RUNS[run] if a.startswith("--gin.")]
  gin.clear_config()
  config.parse_gin(gin_files, extra)
  train_config = run_config.TrainConfig()
  gin.clear_config()
  return train_config, gin_files, extra


def reprice(row: dict) -> dict:
  """The row with its microbatched winner's roofline from the step with its microbatch
  loop unrolled (fit.pricing.cost_twin, compiled with libtpu, cached), as --fit now
  computes it: rows searched before that had m x a one-microbatch twin, an upper bound."""
  from t5jax.parallel import topology  # pylint: disable=g-import-not-at-top
  from t5jax.train.fit import cost, pricing  # pylint: disable=g-import-not-at-top
  fit = row["fit"]
  setting = cost.Setting(**fit["setting"]) if fit else None
  if (not setting or setting.microbatches == 1 or setting.scan_layers
      or fit["report"].get("roofline_from") == "its microbatch loop unrolled"):
    return row  # nothing to price, or priced so already
  config = case_config(row["model"], row["run"])[0]
  priced, twin, _ = pricing.price_microbatches(
      config, setting, fit["report"], topology.CHIPS[fit["report"]["chip"]],
      row["accelerator_type"], 1)
  if priced is None:
    raise RuntimeError(f"{row['model']} {row['run']}: the unrolled step did not compile: {twin}")
  report = {**fit["report"], **priced}
  tried = [{**t, "report": report} if t["setting"] == fit["setting"] else t
           for t in row["tried"]]
  return {**row, "fit": {**fit, "report": report}, "tried": tried,
          "repriced_compile_s": twin["compile_seconds"]}


def write_recipe(row: dict, recipes: str) -> pathlib.Path:
  """The case's run with its winner as a gin file, DIR/TYPE/MODEL_RUN.gin (under
  gin_configs/recipes: `t5jax train --gin_file=recipes/TYPE/MODEL_RUN.gin`), made by
  t5jax's own `fit.writers.recipe`, as `t5jax compile --fit --fit_recipe` writes it."""
  from t5jax.train.fit import cost, search, writers  # pylint: disable=g-import-not-at-top
  model, run, accelerator_type = row["model"], row["run"], row["accelerator_type"]
  train_config, gin_files, extra = case_config(model, run)
  fit = row["fit"]
  winner = search.Trial(cost.Setting(**fit["setting"]), fit["estimated_s"],
                        fit["estimated_bytes"], 0.0, 0.0, report=fit["report"])
  path = pathlib.Path(recipes) / accelerator_type / f"{model}_{run}.gin"
  path.parent.mkdir(parents=True, exist_ok=True)
  text = writers.recipe(winner, train_config, accelerator_type, 1, gin_files, extra)
  path.write_text("\n".join(f"{NOTES[line]}\n{line}" if line in NOTES else line
                            for line in text.split("\n")))
  return path


def table(rows: list[dict]) -> str:
  gib = 2**30
  lines = ["| model | run | slice | setting (--fit) | HBM per chip GiB (headroom) | XLA:CPU "
           "GiB | compiles (s) | roofline ms | MFU bound |", "|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    fit = r["fit"]
    if fit is None:
      lines.append(f"| {r['model']} | {r['run']} | {r['accelerator_type']} | none of "
                   f"{len(r['tried'])} fits | | | | | |")
      continue
    rep, s = fit["report"], fit["setting"]
    label = (f"remat {s['remat_policy']}, {'scan' if s['scan_layers'] else 'unrolled'}"
             + (f", qblock {s['attention_query_block']}" if s["attention_query_block"] else "")
             + f", micro {s['microbatches']}, "
             + ("data-parallel" if s["replicated"] else f"fsdp, tensor {s['tensor']}"))
    seconds = sum(t["report"]["compile_seconds"] for t in r["tried"]  # cached: when first compiled
                  if not math.isnan(t["report"]["compile_seconds"]))  # NaN: a crashed compile
    cpu = r.get("cpu", {})
    cpu_gib = f"{cpu['peak_bytes_per_device'] / gib:.2f}" if "peak_bytes_per_device" in cpu else "-"
    scanned = rep["counted_once"]  # XLA counted a loop's body once: no roofline
    twin = "*" if rep.get("roofline_from") else ""  # from the step with its loop unrolled
    roofline = "-" if scanned else f"{rep['roofline_step_s'] * 1e3:.1f}{twin}"
    mfu = "-" if scanned else f"{rep['roofline_mfu']:.0%}"
    lines.append(
        f"| {r['model']} | {r['run']} | {r['accelerator_type']} | {label} | "
        f"{rep['peak_bytes_per_device'] / gib:.2f} ({rep['headroom']:.0%}) | {cpu_gib} | "
        f"{len(r['tried'])} ({seconds:.0f}) | "
        f"{roofline} | {mfu} |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--case", action="append", default=[], metavar="MODEL:RUN:TYPE")
  parser.add_argument("--compiles", type=int, default=4, help="--fit_compiles per search")
  parser.add_argument("--cpu", action="store_true", help="also XLA:CPU's figure of the winner")
  parser.add_argument("--out", default=None)
  parser.add_argument("--reprice", action="store_true",
                      help="before --recipes: each row of --out whose winner has microbatches "
                      "gets its roofline from the step with its loop unrolled (one libtpu "
                      "compile each), appended to --out")
  parser.add_argument("--recipes", default=None, metavar="DIR",
                      help="after the cases, write the winner of every case in --out (the "
                      "last row of each) as DIR/TYPE/MODEL_RUN.gin, and print their table")
  args = parser.parse_args()
  rows = []
  for case in args.case:
    model, run, accelerator_type = case.split(":")
    row = run_case(model, run, accelerator_type, args.compiles, args.cpu)
    rows.append(row)
    print(json.dumps(row), flush=True)
    if args.out:
      with open(args.out, "a") as f:
        f.write(json.dumps(row) + "\n")
  if args.reprice:
    for row in latest(args.out):
      repriced = reprice(row)
      if repriced is not row:
        print(f"{row['model']} {row['run']} {row['accelerator_type']}: roofline "
              f"{row['fit']['report']['roofline_step_s'] * 1e3:.1f} -> "
              f"{repriced['fit']['report']['roofline_step_s'] * 1e3:.1f} ms", flush=True)
        with open(args.out, "a") as f:
          f.write(json.dumps(repriced) + "\n")
  if args.recipes:
    rows = latest(args.out)
    for row in rows:
      if row["fit"]:
        print(f"Wrote {write_recipe(row, args.recipes)}")
  print()
  print(table(rows))


if __name__ == "__main__":
  main()
