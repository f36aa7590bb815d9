"""Several local processes on jax.distributed (gloo CPU collectives): the same
losses as one process with the same global batch and seed, a checkpoint saved and
resumed together, and a clear exit instead of a hang when one process dies."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import hosts
import tiny

STEPS = 6
FLAGS = tiny.flags("TrainConfig.log_every=1",
                   "TrainConfig.num_sample_predictions=0",
                   "CheckpointConfig.every_steps=3",
                   "OptimizerConfig.warmup_steps=0")
TOTAL_DEVICES = 4


def launch(run_dir, num_processes, steps=STEPS, extra=()):
  """Starts `num_processes` training processes sharing TOTAL_DEVICES CPU devices."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count="
             f"{TOTAL_DEVICES // num_processes}", JAX_PLATFORMS="cpu", PYTHONFAULTHANDLER="1",
             **hosts.compile_cache_env(num_processes))
  port = hosts.free_port()
  procs = []
  for pid in range(num_processes):
    cmd = [sys.executable, "-m", "t5jax", "train", f"--run_dir={run_dir}",
           f"--gin.TrainConfig.num_steps={steps}", *FLAGS, *extra]
    if num_processes > 1:
      cmd += [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num_processes}",
              f"--process_id={pid}"]
    procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
  return procs


def wait_all(procs, timeout=900):
  return hosts.wait_all(procs, timeout=timeout)


def losses(run_dir):
  out = {}
  for line in open(os.path.join(run_dir, "metrics.jsonl")):
    r = json.loads(line)
    out[r["step"]] = r["loss"]
  return out


@pytest.fixture(scope="module")
def single(tmp_path_factory):
  run_dir = str(tmp_path_factory.mktemp("single"))
  # Two steps beyond the others: what a run resumed on another process count must give.
  wait_all(launch(run_dir, 1, steps=STEPS + 2))
  return losses(run_dir)


@pytest.mark.parametrize("num_processes, mesh_files, mesh", [
    (2, [], "{'data': 4, 'fsdp': 1, 'tensor': 1}"),
    (4, [], "{'data': 4, 'fsdp': 1, 'tensor': 1}"),
    # Each process is a "slice": data across processes, FSDP inside each.
    (2, ["--gin_file=runs/demo.gin", "--gin_file=mesh/multislice.gin"],
     "{'data': 2, 'fsdp': 2, 'tensor': 1}"),
], ids=["2proc", "4proc", "2proc_multislice"])
def test_processes_match_one_process(single, tmp_path, num_processes, mesh_files, mesh):
  run_dir = str(tmp_path)
  outs = wait_all(launch(run_dir, num_processes, extra=mesh_files))
  assert f"mesh {mesh}" in outs[0]
  assert "step 6/6" in outs[0] and "step 6/6" not in outs[1]  # only process 0 logs
  got = losses(run_dir)
  assert sorted(got) == list(range(1, STEPS + 1))
  assert sorted(single) == list(range(1, STEPS + 3))
  # The same mesh reduces in the same order; FSDP over processes (multislice) sums in
  # another order, and Adafactor carries the rounding on for a few steps.
  rel = 1e-4 if mesh_files else 1e-5
  for step in got:
    assert got[step] == pytest.approx(single[step], rel=rel), step
  # Orbax wrote the checkpoints from all processes together; they resume together.
  assert sorted(int(p) for p in os.listdir(os.path.join(run_dir, "checkpoints"))
                if p.isdigit()) == [3, 6]
  if num_processes == 2 and not mesh_files:
    outs = wait_all(launch(run_dir, num_processes, steps=STEPS + 2))
    assert all(f"Resumed from step {STEPS}" in o for o in outs)
    assert losses(run_dir)[STEPS + 2] > 0
  if num_processes == 4:
    # Resumed by one process: the data position (saved by four) gives it the same rows.
    outs = wait_all(launch(run_dir, 1, steps=STEPS + 2))
    assert f"Resumed from step {STEPS}" in outs[0]
    resumed = losses(run_dir)
    for step in (STEPS + 1, STEPS + 2):
      assert resumed[step] == pytest.approx(single[step], rel=1e-5), step


def test_a_dead_process_stops_the_others_with_an_error(tmp_path):
  run_dir = str(tmp_path)
  procs = launch(run_dir, 2, steps=10_000, extra=["--gin.CheckpointConfig.every_steps=0",
                                                 "--heartbeat_timeout_seconds=10"])
  deadline = time.time() + 300
  path = os.path.join(run_dir, "metrics.jsonl")
  while not (os.path.exists(path) and os.path.getsize(path) > 0):
    assert time.time() < deadline and procs[0].poll() is None
    time.sleep(0.5)
  procs[1].send_signal(signal.SIGKILL)
  started = time.time()
  try:
    out, _ = procs[0].communicate(timeout=120)
  except subprocess.TimeoutExpired:
    procs[0].kill()
    pytest.fail("process 0 hung after process 1 died")
  assert procs[0].returncode != 0
  # XLA words the missed heartbeat two ways depending on where process 0 notices it
  # ("stopped sending heartbeats" mid-step, "heartbeat timeout" at its shutdown barrier).
  assert "another task died" in out and "heartbeat" in out, out[-3000:]
