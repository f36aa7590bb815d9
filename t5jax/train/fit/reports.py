"""libtpu's compile reports, cached on disk by the full configuration (so a second search,
or a recipe benchmark, compiles nothing twice), each compiled in a child process that a
crash of libtpu's cannot take down with the search."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib

# Part of the cache key: reports of an earlier t5jax that compiled a different program for
# the same configuration are not reused (2: CPU-only attention loops no longer leak into a
# step compiled on a CPU host for a TPU or GPU; 3: the step compiled is the run's own,
# step_builder's, with per-task vectors over the run's tasks rather than one).
REPORT_VERSION = 3


def cache_key(config, accelerator_type: str, slices: int) -> str:
  import jax  # pylint: disable=g-import-not-at-top
  import importlib.metadata as metadata  # pylint: disable=g-import-not-at-top
  try:
    libtpu = metadata.version("libtpu")
  except metadata.PackageNotFoundError:
    libtpu = "none"
  text = json.dumps([dataclasses.asdict(config), accelerator_type, slices, jax.__version__,
                     libtpu, REPORT_VERSION], sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:24]


def cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("T5JAX_COMPILE_CACHE") or
                      pathlib.Path.home() / ".cache" / "t5jax" / "compile_reports")


def cached_compile(config, accelerator_type: str, slices: int) -> tuple[dict, bool]:
  """libtpu's report for `config` on the slice, from the cache if it was compiled before;
  (report, came from the cache)."""
  path = cache_dir() / f"{cache_key(config, accelerator_type, slices)}.json"
  if path.exists():
    report = json.loads(path.read_text())
    # Reports cached before they said whether XLA counted a loop once: the config knows.
    report.setdefault("counted_once", bool(report.get("scan_layers")) or config.microbatches > 1)
    return report, True
  report = _compile_isolated(config, accelerator_type, slices)
  if report.get("crashed"):  # not cached: a host out of memory may not crash next time
    return report, False
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(".tmp")
  tmp.write_text(json.dumps(report))
  tmp.replace(path)
  return report, False


def _compile_in_child(config, accelerator_type: str, slices: int, results) -> None:
  from t5jax.train import aot  # pylint: disable=g-import-not-at-top
  try:
    results.put(("report", aot.compile_for_slice(config, accelerator_type, slices)))
  except Exception as e:  # noqa: BLE001 - handed to the parent, which raises it
    results.put(("error", f"{e}"))


def _compile_isolated(config, accelerator_type: str, slices: int) -> dict:
  """One compile in a child process: libtpu aborts the process on some internal errors
  (seen: a crash in its convolution emitter for one fine-tuning setting of T5 1.1 base), and
  a search must outlive one setting's crash. The child's memory goes back when it ends."""
  import multiprocessing  # pylint: disable=g-import-not-at-top
  import queue  # pylint: disable=g-import-not-at-top
  context = multiprocessing.get_context("spawn")
  results = context.Queue()
  child = context.Process(target=_compile_in_child,
                          args=(config, accelerator_type, slices, results), daemon=True)
  child.start()
  while True:
    try:
      kind, value = results.get(timeout=2.0)
      break
    except queue.Empty:
      if not child.is_alive():
        return {"crashed": True, "compiled": False, "fits": False, "headroom": float("nan"),
                "exit_code": child.exitcode, "peak_bytes_per_device": float("nan"),
                "compile_seconds": float("nan"), "counted_once": True}
  child.join()
  if kind == "error":
    raise ValueError(value)
  return value
