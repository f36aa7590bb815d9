"""Paths to the files shipped in `t5jax/assets/` and a reader that hides the gzip."""

import gzip
import pathlib
from typing import IO

ASSETS_DIR = pathlib.Path(__file__).resolve().parent.parent / "assets"


def asset_path(relative: str) -> pathlib.Path:
  """Returns the path of a shipped asset, or raises if the file is missing.

  Args:
    relative: path under `t5jax/assets/`, e.g. "glue/rte/dev.tsv.gz".

  Returns:
    The absolute path.
  """
  path = ASSETS_DIR / relative
  if not path.is_file():
    raise FileNotFoundError(
        f"shipped data file {path} is missing; reinstall t5jax or restore"
        " t5jax/assets/ from the repository")
  return path


def open_text(relative: str) -> IO[str]:
  """Opens a shipped text file (gzip-compressed if its name ends in .gz) as UTF-8."""
  path = asset_path(relative)
  if path.suffix == ".gz":
    return gzip.open(path, "rt", encoding="utf-8", newline="")
  return open(path, "rt", encoding="utf-8", newline="")
