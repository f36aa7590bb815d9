"""Gin at the top: finding gin files, parsing them and flag bindings, clear errors."""

from __future__ import annotations

import difflib
import inspect
import logging
import os
import re
import tokenize
from pathlib import Path

import gin

from t5jax import fs

REPO_GIN_DIR = Path(__file__).resolve().parent.parent / "gin_configs"


def gin_search_paths() -> list[Path]:
  """Where gin files and their includes are looked up: t5jax's gin_configs first,
  so a shipped name (`runs/demo.gin`) means the shipped file whatever the working
  directory holds, then the working directory for the user's own files."""
  return [REPO_GIN_DIR, Path.cwd()]


def known_gin_files() -> list[str]:
  if not REPO_GIN_DIR.is_dir():
    return []
  return sorted(str(p.relative_to(REPO_GIN_DIR)) for p in REPO_GIN_DIR.rglob("*.gin"))


def explicit_path(name: str) -> bool:
  """`./x.gin`, `../x.gin`, `~/x.gin` and absolute paths name a file, not a shipped config."""
  return os.path.isabs(name) or name.startswith(("./", "../", "~"))


def resolve_gin_file(name: str) -> str:
  """Returns the absolute path of gin file `name`, or raises a one-line error with close names."""
  if explicit_path(name):
    bases, relative = [Path(os.path.expanduser(name)).resolve().parent], Path(name).name
  else:
    bases, relative = gin_search_paths(), name
  for base in bases:
    for candidate in (base / relative, base / f"{relative}.gin"):
      if candidate.is_file():
        return str(candidate.resolve())
  known = known_gin_files()
  close = difflib.get_close_matches(name, known, n=3, cutoff=0.3)
  hint = f" Did you mean {', '.join(close)}?" if close else ""
  raise FileNotFoundError(
      f"Gin file {name!r} not found in {', '.join(str(p) for p in bases)}.{hint}")


def _set_include_search_paths() -> None:
  """Makes gin look up `include 'runs/demo.gin'` in gin_search_paths(), in order, and
  nowhere else. Gin's default prefix '' would also try a relative include as a Python
  package path, which breaks (a TypeError) when the working directory holds a
  folder of the same name, e.g. the `runs/` every run writes to. Gin has no public
  way to reset its prefixes, hence the private list."""
  gin.config._LOCATION_PREFIXES[:] = [str(p) for p in gin_search_paths()]  # noqa: SLF001


def _first_line(error: Exception) -> str:
  text = str(error).strip()
  return _with_close_parameters(text.splitlines()[0]) if text else type(error).__name__


_UNKNOWN_PARAMETER = re.compile(r"Configurable '([\w.]+)' doesn't have a parameter named '(\w+)'")


def _with_close_parameters(message: str) -> str:
  """gin's message for a misspelt parameter, with the configurable's closest parameters."""
  match = _UNKNOWN_PARAMETER.search(message)
  # gin has no public way to read a configurable's parameters, hence its private registry.
  found = match and gin.config._REGISTRY.get_match(match.group(1))  # noqa: SLF001
  if not found:
    return message
  close = difflib.get_close_matches(match.group(2), inspect.signature(found.wrapped).parameters,
                                    n=3, cutoff=0.6)
  return f"{message} Did you mean {', '.join(close)}?" if close else message


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
  _set_include_search_paths()
  for name in gin_files:
    path = resolve_gin_file(name)
    try:
      gin.parse_config_file(path)
    except (ValueError, SyntaxError, KeyError, TypeError, IOError) as e:
      raise ValueError(f"Error in gin file {path}: {_first_line(e)}") from None
  for binding in bindings:
    try:
      gin.parse_config(binding)
    except Exception as e:  # noqa: BLE001 - gin's parser raises anything from tokenize up
      detail = (f"the value is unfinished ({e.args[0]})" if isinstance(e, tokenize.TokenError)
                else _first_line(e))
      raise ValueError(
          f"Bad gin binding {binding!r}: {detail} "
          "(bindings look like --gin.TrainConfig.num_steps=100).") from None
  _check_macros_are_used(bindings)


def _macro_name(binding: str) -> str | None:
  """`NAME=value` (no `.PARAMETER`) defines a gin macro; returns NAME, else None."""
  key = binding.split("=", 1)[0].strip()
  return None if "." in key.rsplit("/", 1)[-1] else key


def _check_macros_are_used(bindings: list[str]) -> None:
  """A macro nothing reads is almost always a misspelt binding (gin accepts it silently).

  Raises:
    ValueError: naming the binding, and what a binding looks like.
  """
  used = {ref.scoped_selector.rsplit("/", 1)[0] for ref in gin.config.iterate_references(
      gin.config._CONFIG, to=gin.config.get_configurable(gin.config.macro))}  # noqa: SLF001
  for binding in bindings:
    name = _macro_name(binding)
    if name is not None and name not in used:
      raise ValueError(
          f"Bad gin binding {binding!r}: {name} is neither CONFIGURABLE.PARAMETER nor a macro "
          f"any gin file reads as %{name} (bindings look like --gin.TrainConfig.num_steps=100).")


def write_operative_config(run_dir: str) -> str:
  """Saves the resolved configuration of this run beside its outputs (local or gs://)."""
  path = fs.join(run_dir, "config.gin")
  fs.write_text(path, gin.config_str())
  return path
