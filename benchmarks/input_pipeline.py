"""Input-pipeline start-up, memory and throughput, and the train step's consumption.

One case measures, in this process, how long `t5jax.data.pipeline.make_batches` takes to
give its first batch (from the call; the task's example store already built), then its
sustained batches/s, examples/s and target tokens/s, and the peak RSS of this process and
of its data workers; optionally (`--model`) the jitted train step's batches/s on the same
batch shape. `--table` runs the cases of docs/performance/input-pipeline.md, each in a
fresh process, and prints them as one table: start_step 0, 10^4 and 10^6 at 32 and 256 local rows.

A position at `--start_step N` is synthesized: the run reads a few batches from the start,
takes each row's mean consumption per step (mixture draws, examples per task) and scales it
to N steps. Its cost does not depend on its magnitude (it is index arithmetic), and
tests/test_data_pipeline.py checks that a saved position resumes exactly.

  python benchmarks/input_pipeline.py --task text_span_corruption --batch 2048 \
      --process_count 8 --process_index 0 --inputs_length 512 --targets_length 114
  python benchmarks/input_pipeline.py --table
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

import report  # noqa: E402 (benchmarks/report.py, beside this script)

# Batches read from the start to synthesize a position far into a run.
_PROBE_BATCHES = 4


def _peak_rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux.


def _children_peak_rss_gb() -> float:
  """The largest peak RSS (VmHWM) of this process's live children (the data workers)."""
  peak = 0
  for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
      with open(f"/proc/{pid}/stat") as f:
        if int(f.read().rsplit(")", 1)[1].split()[1]) != os.getpid():
          continue
      with open(f"/proc/{pid}/status") as f:
        peak = max([peak] + [int(line.split()[1]) for line in f if line.startswith("VmHWM")])
    except (OSError, IndexError, ValueError):
      continue
  return peak / 2**20


def synthesized_position(spec, batch: int, process_index: int, process_count: int,
                         start_step: int) -> np.ndarray | None:
  """This process's rows' position as at `start_step`, scaled from a few real batches."""
  from t5jax.data import pipeline  # pylint: disable=g-import-not-at-top
  if start_step == 0:
    return None
  probe = pipeline.make_batches(spec, batch, process_index, process_count)
  for _ in range(_PROBE_BATCHES):
    next(probe)
  return np.round(probe.state() * (start_step / _PROBE_BATCHES)).astype(np.int64)


def pipeline_rate(spec, batch: int, num_batches: int, process_index: int = 0,
                  process_count: int = 1, position=None):
  """First-batch seconds, then batches/s, examples/s and target tokens/s."""
  from t5jax.data import pipeline  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  iterator = pipeline.make_batches(spec, batch, process_index, process_count, state=position)
  first = next(iterator)
  startup = time.perf_counter() - start
  examples = tokens = 0
  start = time.perf_counter()
  for _ in range(num_batches):
    b = next(iterator)
    seg = b["decoder_segment_ids"]
    # A packed row holds one example per segment: its largest segment id.
    examples += int(seg.max(axis=1).sum())
    tokens += int(np.sum(b["decoder_loss_weights"]))
  seconds = time.perf_counter() - start
  return first, {"first_batch_s": startup, "batches_per_s": num_batches / seconds,
                 "examples_per_s": examples / seconds,
                 "target_tokens_per_s": tokens / seconds,
                 "worker_peak_rss_gb": _children_peak_rss_gb()}


def step_rate(model_name: str, batch_arrays: dict, steps: int, dtype: str) -> float:
  """Batches/s the jitted train step consumes (Adafactor; compile excluded)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from t5jax.train import losses, optim, step as train_step  # pylint: disable=g-import-not-at-top
  from t5jax.parallel import partitioning
  from t5jax.model import config as model_config  # pylint: disable=g-import-not-at-top
  from t5jax.model import t5  # pylint: disable=g-import-not-at-top
  model = t5.Transformer(model_config.get_config(model_name, dtype=dtype))
  opt = optim.OptimizerConfig()
  tx = optim.make_optimizer(opt)
  mesh = partitioning.make_mesh(partitioning.MeshConfig(data=-1))
  num_tasks = int(batch_arrays["decoder_task_ids"].max()) + 1
  with partitioning.sharding_context(mesh):
    state, shardings = train_step.create_train_state(model, tx, mesh, seed=0)
    step = train_step.jit_train_step(
        mesh, shardings, train_step.StepSettings(
            model=model, tx=tx, loss_cfg=losses.LossConfig(),
            task_weights_k=jnp.ones(num_tasks), microbatches=1,
            schedule=optim.learning_rate_schedule(opt)))
    batch = partitioning.host_batch_to_global(batch_arrays, mesh)
    state, m = step(state, batch)
    jax.block_until_ready(m)
    start = time.perf_counter()
    for _ in range(steps):
      state, m = step(state, batch)
    jax.block_until_ready(m)
  return steps / (time.perf_counter() - start)


# The cases of docs/performance/input-pipeline.md's table: (global batch, process count,
# start step, workers; -1: automatic).
TABLE_CASES = [(32, 1, 0, -1), (32, 1, 10**4, -1), (32, 1, 10**6, -1),
               (2048, 8, 0, -1), (2048, 8, 10**4, -1), (2048, 8, 10**6, -1),
               (2048, 8, 0, 1), (2048, 8, 0, 2)]


def _workers_used(args) -> int:
  from t5jax.data import pipeline  # pylint: disable=g-import-not-at-top
  local = args.batch // args.process_count
  return pipeline.auto_workers(local) if args.workers < 0 else min(args.workers, local)


def run_case(args) -> dict:
  from t5jax.data import pipeline, tasks  # noqa: F401  pylint: disable=g-import-not-at-top
  spec = pipeline.InputSpec(args.task, inputs_length=args.inputs_length,
                            targets_length=args.targets_length, num_workers=args.workers)
  # Builds the example stores (once per data dir) before anything is timed.
  next(pipeline.make_batches(spec, args.process_count, 0, args.process_count))
  position = synthesized_position(spec, args.batch, args.process_index, args.process_count,
                                  args.start_step)
  first, produced = pipeline_rate(spec, args.batch, args.batches, args.process_index,
                                  args.process_count, position)
  result = {"task": args.task, "batch": args.batch, "process_count": args.process_count,
            "process_index": args.process_index,
            "local_rows": args.batch // args.process_count, "start_step": args.start_step,
            "workers": args.workers, "workers_used": _workers_used(args),
            "lengths": [args.inputs_length, args.targets_length],
            **produced, "peak_rss_gb": _peak_rss_gb(), "cores": os.cpu_count()}
  if args.model:
    consumed = step_rate(args.model, first, args.steps, args.dtype)
    result.update(model=args.model, step_batches_per_s=consumed,
                  pipeline_over_step=produced["batches_per_s"] / consumed)
  return result


def table(args) -> None:
  rows = []
  for batch, count, start_step, workers in TABLE_CASES:
    cmd = [sys.executable, __file__, "--task", args.task, "--batch", str(batch),
           "--process_count", str(count), "--process_index", "0", "--start_step",
           str(start_step), "--inputs_length", str(args.inputs_length), "--targets_length",
           str(args.targets_length), "--batches", str(args.batches), "--workers",
           str(workers)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rows.append(json.loads(out.strip().splitlines()[-1]))
    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
  print("| local rows (global / processes) | start step | workers | first batch | peak RSS (main "
        "+ largest worker) | batches/s | examples/s | target tokens/s |")
  print("|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['local_rows']} ({r['batch']} / {r['process_count']}) | {r['start_step']:,} | "
          f"{r['workers_used']} | "
          f"{r['first_batch_s'] * 1000:,.0f} ms | {r['peak_rss_gb']:.2f} + "
          f"{r['worker_peak_rss_gb']:.2f}"
          f" GB | {r['batches_per_s']:.2f} | {r['examples_per_s']:,.0f} | "
          f"{r['target_tokens_per_s']:,.0f} |")
  report.emit_json({"table": rows}, args.json_out)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--task", default="text_span_corruption")
  p.add_argument("--batch", type=int, default=32, help="global batch size in rows")
  p.add_argument("--process_count", type=int, default=1,
                 help="processes sharing the global batch (this one measures its rows)")
  p.add_argument("--process_index", type=int, default=0)
  p.add_argument("--start_step", type=int, default=0,
                 help="start from a (synthesized) position this many steps in")
  p.add_argument("--workers", type=int, default=-1,
                 help="InputSpec.num_workers (-1: one per 64 local rows, up to cores / 2 - 1)")
  p.add_argument("--inputs_length", type=int, default=512)
  p.add_argument("--targets_length", type=int, default=114)
  p.add_argument("--batches", type=int, default=20, help="batches timed after the first")
  p.add_argument("--model", default=None, help="also time this model's train step")
  p.add_argument("--dtype", default="float32")
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--table", action="store_true",
                 help="run docs/performance/input-pipeline.md's cases")
  p.add_argument("--json_out", default=None)
  args = p.parse_args(argv)
  if args.table:
    table(args)
    return
  result = run_case(args)
  print(f"first batch {result['first_batch_s']:.1f} s; {result['batches_per_s']:.2f} batches/s, "
        f"{result['examples_per_s']:,.0f} examples/s, {result['target_tokens_per_s']:,.0f} "
        f"target tokens/s; peak RSS {result['peak_rss_gb']:.2f} GB (+ "
        f"{result['worker_peak_rss_gb']:.2f} GB largest worker)", file=sys.stderr)
  report.emit_json(result, args.json_out)


if __name__ == "__main__":
  main()
