"""Processes that share nothing but a bucket, as a pod's hosts do: each `t5jax` process gets
its own working directory, HOME (so its own TFDS data and caches) and TMPDIR, and reaches
the run directory only through a GCS API server on localhost."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
TESTS = pathlib.Path(__file__).resolve().parent


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


# The shipped datasets the hosts' commands read (the demo's Multi30k).
HOST_DATASETS = ("t5jax_multi30k",)


def _give_prepared_data(home: pathlib.Path) -> None:
  """Each host's own copy of the shipped datasets it reads, as a host that has prepared them
  has (~40 s per host and per run directory otherwise): prepared once in the test session's
  data dir, then copied, never shared."""
  from t5jax.data import prepare  # pylint: disable=g-import-not-at-top
  mine = home / ".cache" / "t5jax" / "tfds"
  for name in HOST_DATASETS:
    if not (mine / name).exists():
      prepare.prepared_builder(name)
      shutil.copytree(prepare.data_dir() / name, mine / name)


def host_env(root: pathlib.Path, server_url: str, devices: int) -> tuple[dict, pathlib.Path]:
  """(environment, working directory) of one host under `root`."""
  for name in ("work", "home", "tmp"):
    (root / name).mkdir(parents=True, exist_ok=True)
  _give_prepared_data(root / "home")
  env = {k: v for k, v in os.environ.items()
         if k not in ("T5JAX_DATA_DIR", "TENSORSTORE_GCS_HTTP_URL", "PWD", "OLDPWD")}
  env.update(HOME=str(root / "home"), TMPDIR=str(root / "tmp"), STORAGE_EMULATOR_HOST=server_url,
             JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), str(TESTS),
                                                      os.environ.get("PYTHONPATH")])),
             PYTHONFAULTHANDLER="1")
  return env, root / "work"


def compile_cache_env(num_processes: int = 1) -> dict:
  """The test session's persistent compilation cache (conftest.py), for t5jax processes the
  tests start: a test-speed aid only (what a process compiles does not depend on it), so a
  command run again does not compile its steps again. Processes of one jax.distributed job
  get none: each would read entries that another test's job is writing, a source of
  difference between the job's processes that a test should not have (and no measured
  gain)."""
  if num_processes > 1:
    return {}
  import jax  # pylint: disable=g-import-not-at-top
  directory = jax.config.jax_compilation_cache_dir
  if not directory:
    return {}
  return {"JAX_COMPILATION_CACHE_DIR": directory,
          "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "1"}


def launch(root: pathlib.Path, server_url: str, args: list[str], num_processes: int = 1,
           devices: int = 2) -> list[subprocess.Popen]:
  """Starts `t5jax ARGS` as `num_processes` hosts (jax.distributed on 127.0.0.1), host i in
  ROOT/host{i}; each host has `devices` CPU devices."""
  port = free_port()
  procs = []
  for i in range(num_processes):
    env, cwd = host_env(root / f"host{i}", server_url, devices)
    env.update(compile_cache_env(num_processes))
    cmd = [sys.executable, "-m", "t5jax", *args]
    if num_processes > 1:
      cmd += [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num_processes}",
              f"--process_id={i}"]
    procs.append(subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
  return procs


def wait_all(procs, timeout: float = 1200, ok: bool = True) -> list[str]:
  """Each process's output; asserts exit status 0 unless `ok` is False. A process still
  running after `timeout` seconds is a hang: every process is stopped with SIGABRT, so
  Python's fault handler (PYTHONFAULTHANDLER, set by `process_env`) prints where each
  thread of each one was, and the test fails with all their outputs."""
  deadline = time.monotonic() + timeout
  outs = []
  for p in procs:
    try:
      out, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      for q in procs:
        if q.poll() is None:
          q.send_signal(signal.SIGABRT)
      stacks = []
      for i, q in enumerate(procs):
        try:
          stacks.append(f"--- process {i}:\n{q.communicate(timeout=60)[0][-6000:]}")
        except subprocess.TimeoutExpired:
          q.kill()
          stacks.append(f"--- process {i}: no answer to SIGABRT")
      raise AssertionError(f"{len(procs)} process(es) still running after {timeout:.0f} s; "
                           "where each was:\n" + "\n".join(stacks)) from None
    if ok:
      assert p.returncode == 0, out[-4000:]
    outs.append(out)
  return outs


def read_losses(text: str) -> dict[int, float]:
  """The last logged training loss of each step in a metrics.jsonl's text."""
  out = {}
  for line in text.splitlines():
    record = json.loads(line)
    if record.get("split", "train") == "train":
      out[record["step"]] = record["loss"]
  return out


def local_gs_folders(*roots: pathlib.Path) -> list[str]:
  """Every file or folder named like a mangled URL (gs:) below `roots`."""
  found = []
  for root in roots:
    for dirpath, dirnames, filenames in os.walk(root):
      found += [os.path.join(dirpath, n) for n in dirnames + filenames if n.startswith("gs:")]
  return found


def wait_until(predicate, procs, timeout: float = 600, poll: float = 0.2) -> None:
  """Polls `predicate` until true; fails if a process exits first or time runs out."""
  deadline = time.time() + timeout
  while not predicate():
    for p in procs:
      assert p.poll() is None, p.stdout.read()[-4000:]
    assert time.time() < deadline, "timed out"
    time.sleep(poll)
