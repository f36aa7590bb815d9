"""The train step compiled by libtpu for TPU slices (no TPU needed), beside XLA:CPU's estimate.

    python benchmarks/tpu_compile.py --out benchmarks/results/tpu_compile.jsonl \
        --case t5_1_1_base:v5p-8:plain --case t5_1_1_base:v5p-8:scan_full --cpu

Each case is MODEL:TYPE:SETTING with SETTING one of `SETTINGS`, on `runs/pretrain.gin`
(T5's batch 128, 512/114) and `mesh/fsdp.gin`. Each compile runs in its own process
(`t5jax compile --topology ...`); `--cpu` adds the same config on as many fake CPU devices
(`t5jax compile --devices N`). One JSON line per compile, and a table at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
SETTINGS = {
    "plain": [],
    "scan_full": ["--gin.ModelSettings.scan_layers=True",
                  "--gin.ModelSettings.remat_policy='full'"],
    "full": ["--gin.ModelSettings.remat_policy='full'"],
    "qblock": ["--gin.ModelSettings.attention_query_block=128"],
}


def compile_case(model: str, target: list[str], setting: str) -> dict:
  command = [sys.executable, "-m", "t5jax", "compile", *target,
             "--gin_file=runs/pretrain.gin", f"--gin_file=models/{model}.gin",
             "--gin_file=mesh/fsdp.gin", *SETTINGS[setting]]
  env = {**os.environ, "PYTHONPATH": str(REPO)}
  for name in ("XLA_FLAGS", "JAX_PLATFORMS"):
    env.pop(name, None)
  start = time.time()
  result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=str(REPO))
  if result.returncode:
    raise RuntimeError(f"{' '.join(command)}:\n{result.stderr[-2000:]}")
  report = json.loads(result.stdout.strip().splitlines()[-1])
  report.update({"setting": setting, "wall_s": round(time.time() - start, 1),
                 "target": " ".join(target)})
  return report


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--case", action="append", required=True, metavar="MODEL:TYPE:SETTING")
  parser.add_argument("--cpu", action="store_true",
                      help="also compile each case for as many fake CPU devices")
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  from t5jax.parallel import topology  # pylint: disable=g-import-not-at-top
  rows = []
  for case in args.case:
    model, accelerator_type, setting = case.split(":")
    targets = [["--topology", accelerator_type]]
    if args.cpu:
      targets.append(["--devices", str(topology.slice_of(accelerator_type).chips)])
    for target in targets:
      row = compile_case(model, target, setting)
      rows.append(row)
      print(json.dumps(row), flush=True)
      if args.out:
        with open(args.out, "a") as f:
          f.write(json.dumps(row) + "\n")
  gib = 2**30
  print("\nmodel  target  setting  compile s  args GiB  temps GiB  peak GiB  fits  "
        "roofline ms  MFU")
  for r in rows:
    tpu = "accelerator_type" in r
    print(f"{r['model']}  {r['target']}  {r['setting']}  {r['compile_seconds']}  "
          f"{r['argument_size_in_bytes'] / gib:.2f}  {r['temp_size_in_bytes'] / gib:.2f}  "
          f"{r['peak_bytes_per_device'] / gib:.2f}  {r['fits'] if tpu else '-'}  "
          f"{r['roofline_step_s'] * 1e3 if tpu else float('nan'):.1f}  "
          f"{r['roofline_mfu'] if tpu else float('nan'):.2f}")


if __name__ == "__main__":
  main()
