"""Asynchronous checkpointing of a T5 training state onto local disk and into a bucket.

For each model size and destination (a local temporary directory; gs://t5jax-test on a
GCS API server on localhost, tests/gcs_server.py), in one process:
  1. the state's size: parameters, Adafactor state, step, RNG and data position;
  2. `--saves` saves timed alone, after a first one (Orbax's set-up, reported apart):
     the `Checkpointer.save()` call (what the training loop is blocked for) and the
     `wait()` after it (Orbax's background write); duration = both, throughput =
     size / duration;
  3. the step time without saves and with a save every `--every` steps, in `--rounds`
     rounds that take turns (wall time per step: the step, blocked until ready, plus
     the save() call when there is one), and their ratio;
  4. where the blocked time goes: timers wrapped around the Orbax functions that save()
     runs on the training thread (device-to-host copy, per-array metadata, thread starts,
     the step directory check, the wait for the previous save), for every save; and one
     more save under cProfile, its top functions. Orbax's own background-phase durations
     (jax.monitoring events) go into the JSON.
The project's goal: the loop is blocked for at most 20% of a save's duration.
It prints a table and appends one JSON line per row to --json_out.

  JAX_PLATFORMS=cpu python benchmarks/checkpoint_save.py \\
      --models t5_1_1_small,t5_1_1_base --saves 3 --steps 8 --rounds 2
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import datetime
import io
import math
import os
import platform
import pstats
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(_HERE, "..", "tests"))
import gcs_server  # noqa: E402 (tests/gcs_server.py)

import report  # noqa: E402 (benchmarks/report.py, beside this script)
from train_step import synthetic_batch  # noqa: E402 (benchmarks/train_step.py)

DESTINATIONS = ("local", "gcs")


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--models", default="t5_1_1_small,t5_1_1_base",
                 help="comma-separated model sizes (t5jax.model.config.SIZES)")
  p.add_argument("--destinations", default=",".join(DESTINATIONS),
                 help="comma-separated: local (a temporary directory), "
                      "gcs (a GCS API server on localhost)")
  p.add_argument("--saves", type=int, default=3, help="saves timed alone per row")
  p.add_argument("--steps", type=int, default=8,
                 help="timed steps per round without saves, then about as many with saves "
                      "(a multiple of --every)")
  p.add_argument("--rounds", type=int, default=2,
                 help="rounds of steps without and with saves, taking turns")
  p.add_argument("--every", type=int, default=0,
                 help="save every this many steps in the step-time phase; 0: the fewest "
                      "steps that last longer than one save (from part 2), so that each "
                      "save overlaps training and is done before the next")
  p.add_argument("--batch", type=int, default=2)
  p.add_argument("--inputs_length", type=int, default=32)
  p.add_argument("--targets_length", type=int, default=32)
  p.add_argument("--layers", type=int, default=None,
                 help="override encoder and decoder depth (not used for the figures)")
  p.add_argument("--local_dir", default=None,
                 help="parent of the local checkpoint directories (default: the system's temp)")
  p.add_argument("--profile_top", type=int, default=12,
                 help="functions listed from the profile of one save() call")
  p.add_argument("--json_out", default=os.path.join(_HERE, "results", "checkpoint_save.jsonl"))
  return p.parse_args(argv)


def machine() -> dict:
  import jax
  import orbax.checkpoint as ocp
  cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
              if line.startswith("model name")), platform.processor())
  dev = jax.devices()[0]
  return {"cpu": cpu, "platform": platform.platform(), "nproc": os.cpu_count(),
          "affinity": len(os.sched_getaffinity(0)),
          "jax_device": f"{dev.platform}:{dev.device_kind}",
          "jax": jax.__version__, "orbax": ocp.__version__, "loadavg_1m": os.getloadavg()[0]}


def tree_mb(tree) -> float:
  import jax
  total = 0
  for x in jax.tree.leaves(tree):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    total += x.nbytes
  return total / 1e6


class OrbaxEvents:
  """Collects the durations Orbax reports (jax.monitoring) of a save's background
  phase (directory creation, TensorStore writes, metadata, finalize) until take()."""

  def __init__(self):
    import jax
    self.events: list[tuple[str, float]] = []
    jax.monitoring.register_event_duration_secs_listener(self._record)

  def _record(self, name, seconds, **_):
    if "/orbax/write/background" in name:
      self.events.append((name, float(seconds)))

  def take(self) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, seconds in self.events:
      out[name] = out.get(name, 0.0) + seconds
    self.events = []
    return out


class BlockedTimers:
  """Seconds spent in a few Orbax functions that save() calls on the training thread,
  measured by wrapping them (unlike cProfile, at no cost to the rest): the
  device-to-host copy, the per-array metadata, the wait for the previous save, the
  check whether the step directory already exists (one request to the destination),
  and starting the background threads (one per item and array write)."""

  def __init__(self):
    from orbax.checkpoint import checkpoint_manager
    from orbax.checkpoint._src.checkpointers import async_checkpointer
    from orbax.checkpoint._src.futures import future
    from orbax.checkpoint._src.handlers import base_pytree_checkpoint_handler as pytree
    from orbax.checkpoint._src.serialization import replica_slices
    self.seconds: dict[str, float] = {}
    self._wrap(replica_slices, "transfer_arrays_to_host", "device-to-host copy")
    self._wrap(pytree.BasePyTreeCheckpointHandler, "_get_param_infos",
               "per-array metadata (param infos)")
    self._wrap(checkpoint_manager.CheckpointManager, "wait_until_finished",
               "wait for the previous save")
    self._wrap(async_checkpointer.AsyncCheckpointer, "_prepare_destination_async",
               "destination exists check", is_async=True)
    self._wrap(future.CommitFutureAwaitingContractedSignals, "__init__",
               "starting background threads")

  def _wrap(self, owner, name: str, stage: str, is_async: bool = False) -> None:
    original = getattr(owner, name)

    def add(start):
      self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start

    if is_async:
      async def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
          return await original(*args, **kwargs)
        finally:
          add(start)
    else:
      def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
          return original(*args, **kwargs)
        finally:
          add(start)
    setattr(owner, name, timed)

  def take(self, total: float | None = None) -> dict[str, float]:
    """The seconds since the last take(), and the rest of `total` as "other"."""
    out, self.seconds = self.seconds, {}
    if total is not None:
      out["other (Orbax's Python: tree maps, event loop, bookkeeping)"] = max(
          0.0, total - sum(out.values()))
    return out


class Trainer:
  """One model's jitted train step and state on a single-batch stream."""

  def __init__(self, model_name: str, args):
    import jax
    from t5jax.model import config as model_config, t5
    from t5jax.parallel import partitioning
    from t5jax.train import losses, optim, step as train_step
    overrides = {}
    if args.layers:
      overrides.update(num_encoder_layers=args.layers, num_decoder_layers=args.layers)
    self.cfg = model_config.get_config(model_name, **overrides)
    self.mesh = partitioning.make_mesh(partitioning.MeshConfig(-1, 1, 1))
    self.sharding_context = lambda: partitioning.sharding_context(self.mesh)
    model = t5.Transformer(self.cfg)
    opt_cfg = optim.OptimizerConfig()
    tx = optim.make_optimizer(opt_cfg)
    loss_cfg = losses.LossConfig()
    batch_np = synthetic_batch(args.batch, args.inputs_length, args.targets_length,
                               self.cfg.vocab_size)
    with self.sharding_context():
      self.state, shardings = train_step.create_train_state(
          model, tx, self.mesh, seed=0, inputs_length=args.inputs_length,
          targets_length=args.targets_length)
      self._step = train_step.jit_train_step(
          self.mesh, shardings, train_step.StepSettings(
              model=model, tx=tx, loss_cfg=loss_cfg,
              task_weights_k=loss_cfg.weights_vector(["bench"]), microbatches=1,
              schedule=optim.learning_rate_schedule(opt_cfg)))
      self.batch = partitioning.host_batch_to_global(batch_np, self.mesh)
      # What the loop saves beside the state: each row's position in its data stream.
      self.position = partitioning.host_batch_to_global(
          {"p": np.zeros((args.batch, 2), np.int32)}, self.mesh)["p"]
    self.meta = {"model_config": dataclasses.asdict(self.cfg), "data": {}}
    self.num_params = int(sum(x.size for x in jax.tree.leaves(self.state.params)))
    start = time.perf_counter()
    self.step()
    self.compile_s = time.perf_counter() - start

  def step(self) -> None:
    import jax
    with self.sharding_context():
      self.state, metrics = self._step(self.state, self.batch)
      jax.block_until_ready((self.state, metrics))

  def state_mb(self) -> dict[str, float]:
    s = self.state
    parts = {"params": tree_mb(s.params), "opt_state": tree_mb(s.opt_state),
             "step_rng_position": tree_mb((s.step, s.rng, s.task_state, self.position))}
    parts["total"] = sum(parts.values())
    return parts


def save(ckpt, trainer, timers: BlockedTimers) -> dict:
  """One save as the loop makes it: seconds blocked in save() (and in which parts of
  it), then in wait()."""
  timers.take()
  start = time.perf_counter()
  ckpt.save(trainer.state, trainer.meta, metrics={"loss": 0.0}, data_position=trainer.position)
  blocked = time.perf_counter() - start
  parts = timers.take(blocked)
  start = time.perf_counter()
  ckpt.wait()
  wait = time.perf_counter() - start
  timers.take()
  return {"blocked_s": blocked, "wait_s": wait, "duration_s": blocked + wait,
          "blocked_parts_s": parts}


# Frames that every save passes through: left out of the profile's list.
_GENERIC_FRAMES = ("asyncio/", "_contextvars", "checkpoint_save.py", "threading.py")


def profile_save(ckpt, trainer, top: int) -> dict:
  """One save() call under cProfile (the main thread, i.e. what the loop waits for):
  the Orbax and t5jax functions with the most cumulative and own time."""
  profiler = cProfile.Profile()
  start = time.perf_counter()
  profiler.enable()
  ckpt.save(trainer.state, trainer.meta, metrics={"loss": 0.0}, data_position=trainer.position)
  profiler.disable()
  blocked = time.perf_counter() - start
  ckpt.wait()
  stats = pstats.Stats(profiler, stream=io.StringIO())
  rows = []
  for (path, line, name), (_, calls, tottime, cumtime, _) in stats.stats.items():
    if any(frame in path + name for frame in _GENERIC_FRAMES):
      continue
    where = path.split("site-packages/")[-1].split("/work/main/")[-1]
    rows.append({"function": f"{where}:{line}({name})", "calls": calls,
                 "cum_s": round(cumtime, 4), "own_s": round(tottime, 4)})
  rows.sort(key=lambda r: -r["cum_s"])
  by_own = sorted(rows, key=lambda r: -r["own_s"])[:top]
  return {"blocked_s": blocked, "by_cumulative": rows[:3 * top], "by_own": by_own}


def step_times(trainer, ckpt, steps: int, every: int, timers: BlockedTimers
               ) -> tuple[list[float], list[dict]]:
  """Wall seconds of each of `steps` steps, with a save() after the first of every
  `every` steps (0: none), so each save has `every` steps to overlap; and the seconds of
  each of those save() calls, with their parts. Waits (untimed) for the last save."""
  times, saves = [], []
  for i in range(steps):
    start = time.perf_counter()
    trainer.step()
    if every and i % every == 0:
      timers.take()
      saved = time.perf_counter()
      ckpt.save(trainer.state, trainer.meta, metrics={"loss": 0.0},
                data_position=trainer.position)
      blocked = time.perf_counter() - saved
      saves.append({"blocked_s": blocked, "blocked_parts_s": timers.take(blocked)})
    times.append(time.perf_counter() - start)
  ckpt.wait()
  timers.take()
  return times, saves


def mean_parts(saves: list[dict]) -> dict[str, float]:
  """The mean seconds of each timed part of save() over `saves` (absent: 0)."""
  names = sorted({k for s in saves for k in s["blocked_parts_s"]})
  return {k: statistics.mean(s["blocked_parts_s"].get(k, 0.0) for s in saves) for k in names}


def run_row(trainer, destination: str, directory: str, args, events: OrbaxEvents,
            timers: BlockedTimers) -> dict:
  """Parts 1-4 of the docstring for one model and destination."""
  from t5jax import checkpoint
  ckpt = checkpoint.Checkpointer(directory, checkpoint.CheckpointConfig())
  sizes = trainer.state_mb()
  trainer.step()
  first = save(ckpt, trainer, timers)  # Orbax's first save sets things up: timed apart
  saves = []
  for _ in range(args.saves):
    trainer.step()  # a new step number for each save
    events.take()
    saves.append({**save(ckpt, trainer, timers), "orbax_background_s": events.take()})
  trainer.step()
  profile = profile_save(ckpt, trainer, args.profile_top)
  events.take()
  timers.take()
  duration = statistics.mean(s["duration_s"] for s in saves)
  blocked = statistics.mean(s["blocked_s"] for s in saves)

  # Rounds of steps without saves, then with, so load from elsewhere falls on both alike.
  plain, saving, blocked_training, every = [], [], [], args.every
  for _ in range(args.rounds):
    plain += step_times(trainer, ckpt, args.steps, 0, timers)[0]
    every = every or max(2, math.ceil(duration / statistics.mean(plain)) + 1)
    steps = every * max(1, round(args.steps / every))
    times, blocked_saves = step_times(trainer, ckpt, steps, every, timers)
    saving += times
    blocked_training += blocked_saves
  events.take()
  ckpt.close()
  plain_s, saving_s = statistics.mean(plain), statistics.mean(saving)
  return {
      "benchmark": "checkpoint_save", "destination": destination, "directory": directory,
      "state_mb": sizes, "first_save": first, "saves": saves, "save_s": duration,
      "blocked_s": blocked,
      "wait_s": statistics.mean(s["wait_s"] for s in saves),
      "mb_per_s": sizes["total"] / duration, "blocked_fraction": blocked / duration,
      "goal_met": blocked / duration <= 0.2, "blocked_parts_s": mean_parts(saves),
      "blocked_s_in_training_mean": statistics.mean(s["blocked_s"] for s in blocked_training),
      "blocked_parts_s_in_training": mean_parts(blocked_training),
      "step_s_without_saves": plain_s, "step_s_with_saves": saving_s,
      "step_ratio": saving_s / plain_s, "every": every, "rounds": args.rounds,
      "blocked_s_in_training": blocked_training,
      "step_times_without_s": plain, "step_times_with_s": saving, "profile": profile,
  }


def main(argv=None):
  args = parse_args(argv)
  server = gcs_server.Server() if "gcs" in args.destinations.split(",") else None
  if server:  # before t5jax.fs is imported: it and TensorStore read it once
    os.environ["STORAGE_EMULATOR_HOST"] = server.url
  info = machine()
  events, timers = OrbaxEvents(), BlockedTimers()
  local_root = tempfile.mkdtemp(prefix="t5jax-ckpt-bench-", dir=args.local_dir)
  date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  results = []
  try:
    for model_name in args.models.split(","):
      trainer = Trainer(model_name, args)
      print(f"{model_name}: {trainer.num_params:,} parameters, compile + first step "
            f"{trainer.compile_s:.1f} s", flush=True)
      for destination in args.destinations.split(","):
        name = f"{model_name}-{int(time.time())}"
        directory = (f"gs://{gcs_server.BUCKET}/bench/{name}" if destination == "gcs"
                     else os.path.join(local_root, name))
        row = run_row(trainer, destination, directory, args, events, timers)
        row.update(date=date, model=model_name, layers=args.layers,
                   num_params=trainer.num_params, batch=args.batch,
                   inputs_length=args.inputs_length, targets_length=args.targets_length,
                   machine={**info, "loadavg_1m_row_end": os.getloadavg()[0]})
        results.append(row)
        print(f"  {destination}: save {row['save_s']:.2f} s, blocked {row['blocked_s']:.3f} s "
              f"({row['blocked_fraction']:.0%}), step {row['step_s_without_saves']:.2f} -> "
              f"{row['step_s_with_saves']:.2f} s", flush=True)
        if destination == "local":
          shutil.rmtree(directory, ignore_errors=True)
      del trainer
  finally:
    shutil.rmtree(local_root, ignore_errors=True)
    if server:
      server.stop()

  print(f"\n{info['cpu']} ({info['affinity']} cores), jax {info['jax']}, orbax {info['orbax']}, "
        f"batch {args.batch} x {args.inputs_length}/{args.targets_length}, {date}")
  print("| model | dest | state MB | save s | MB/s | blocked s | of which d2h s | blocked % | "
        "goal | blocked s in training | step s no saves | step s saving (every) | ratio |")
  print("|---|---|--:|--:|--:|--:|--:|--:|:-:|--:|--:|--:|--:|")
  for r in results:
    d2h = r["blocked_parts_s"].get("device-to-host copy", 0.0)
    print(f"| {r['model']} | {r['destination']} | {r['state_mb']['total']:,.0f} | "
          f"{r['save_s']:.2f} | {r['mb_per_s']:,.0f} | {r['blocked_s']:.3f} | {d2h:.3f} | "
          f"{r['blocked_fraction']:.1%} | {'met' if r['goal_met'] else 'MISSED'} | "
          f"{r['blocked_s_in_training_mean']:.3f} | {r['step_s_without_saves']:.3f} | "
          f"{r['step_s_with_saves']:.3f} ({r['every']}) | {r['step_ratio']:.2f} |")
  for r in results:
    prof = r["profile"]
    print(f"\nWhere save() blocks, {r['model']} {r['destination']}: timed saves (mean of "
          f"{len(r['saves'])}, {r['blocked_s']:.3f} s; while training: mean of "
          f"{len(r['blocked_s_in_training'])}, {r['blocked_s_in_training_mean']:.3f} s)")
    for stage, seconds in sorted(r["blocked_parts_s"].items(), key=lambda kv: -kv[1]):
      during = r["blocked_parts_s_in_training"].get(stage, 0.0)
      print(f"  {seconds:7.3f} s {seconds / r['blocked_s']:5.0%}  {stage} "
            f"(while training: {during:.3f} s)")
    print(f"  one more save under cProfile ({prof['blocked_s']:.3f} s with the profiler's "
          "overhead), top functions by cumulative s (calls):")
    for p in prof["by_cumulative"][:args.profile_top]:
      print(f"  {p['cum_s']:8.3f}  {p['calls']:5d}  {p['function']}")
  for r in results:
    report.emit_json(r, args.json_out)
  return results


if __name__ == "__main__":
  main()
