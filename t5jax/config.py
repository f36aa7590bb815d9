"""Gin at the top: finding gin files, parsing them and flag bindings, clear errors."""

from __future__ import annotations

import difflib
import logging
import os
from pathlib import Path

import gin

REPO_GIN_DIR = Path(__file__).resolve().parent.parent / "gin_configs"


def gin_search_paths() -> list[Path]:
  """Where gin files and their includes are looked up: cwd, then t5jax's gin_configs."""
  return [Path.cwd(), REPO_GIN_DIR]


def known_gin_files() -> list[str]:
  if not REPO_GIN_DIR.is_dir():
    return []
  return sorted(str(p.relative_to(REPO_GIN_DIR)) for p in REPO_GIN_DIR.rglob("*.gin"))


def resolve_gin_file(name: str) -> str:
  """Returns the path of gin file `name`, or raises a one-line error with close names."""
  for base in gin_search_paths():
    for candidate in (base / name, base / f"{name}.gin"):
      if candidate.is_file():
        return str(candidate)
  known = known_gin_files()
  close = difflib.get_close_matches(name, known, n=3, cutoff=0.3)
  hint = f" Did you mean {', '.join(close)}?" if close else ""
  raise FileNotFoundError(
      f"Gin file {name!r} not found in {', '.join(str(p) for p in gin_search_paths())}.{hint}")


def _first_line(error: Exception) -> str:
  text = str(error).strip()
  return text.splitlines()[0] if text else type(error).__name__


class _QuietIncludeLookups(logging.Filter):
  """gin logs an ERROR for every search path an include is not in; only a file
  found nowhere is an error, and that one raises."""

  def filter(self, record):
    return not record.getMessage().startswith("Path not found:")


def parse_gin(gin_files: list[str], bindings: list[str]) -> None:
  """Clears gin, then applies the files in order and the bindings after them.

  Raises:
    FileNotFoundError: a gin file does not exist.
    ValueError: a binding or a file's content names an unknown configurable or
      parameter, or has a syntax error; the message names the culprit.
  """
  root = logging.getLogger()
  quiet = _QuietIncludeLookups()
  root.addFilter(quiet)
  try:
    _parse(gin_files, bindings)
  finally:
    root.removeFilter(quiet)


# Bound before any file, so that a run that names no data trains on the demo mixture.
DEFAULT_BINDINGS = ("InputSpec.mixture_or_task = 'multi30k_mix'",)


def _parse(gin_files: list[str], bindings: list[str]) -> None:
  gin.clear_config()
  for binding in DEFAULT_BINDINGS:  # skipped where training is not imported (e.g. infer)
    gin.parse_config(binding, skip_unknown=True)
  for path in gin_search_paths():
    if path.is_dir():
      gin.add_config_file_search_path(str(path))
  for name in gin_files:
    path = resolve_gin_file(name)
    try:
      gin.parse_config_file(path)
    except (ValueError, SyntaxError, KeyError, TypeError, IOError) as e:
      raise ValueError(f"Error in gin file {path}: {_first_line(e)}") from None
  for binding in bindings:
    try:
      gin.parse_config(binding)
    except (ValueError, SyntaxError, KeyError, TypeError) as e:
      raise ValueError(
          f"Bad gin binding {binding!r}: {_first_line(e)} "
          "(bindings look like --gin.TrainConfig.num_steps=100).") from None


def write_operative_config(run_dir: str) -> str:
  """Saves the resolved configuration of this run beside its outputs."""
  os.makedirs(run_dir, exist_ok=True)
  path = os.path.join(run_dir, "config.gin")
  with open(path, "w", encoding="utf-8") as f:
    f.write(gin.config_str())
  return path
