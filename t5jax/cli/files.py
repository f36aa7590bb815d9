"""The command line's files: checks of path flags, the JSONL of `t5jax infer` and
`t5jax score`, and one-line error messages."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from typing import Iterator

from t5jax import fs


def _absolute(path: str) -> str:
  return os.path.abspath(os.path.expanduser(path))


def _file_above(path: str) -> str | None:
  """The nearest existing ancestor of `path` if it is not a directory (so nothing
  below it can be created), else None."""
  parent = os.path.dirname(_absolute(path))
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  return None if os.path.isdir(parent) else parent


def _check_exists(flag: str, path: str, directory: bool) -> None:
  if not os.path.exists(_absolute(path)):
    raise FileNotFoundError(f"{flag} {path} does not exist (paths are relative to "
                            f"{os.getcwd()}).")
  if os.path.isdir(_absolute(path)) != directory:
    raise ValueError(f"{flag} {path} is a {'file' if directory else 'directory'}; give a "
                     f"{'directory' if directory else 'file'}.")


def _check_url_exists(flag: str, path: str, directory: bool) -> None:
  if not (fs.isdir(path) if directory else fs.isfile(path)):
    raise FileNotFoundError(f"{flag} {path} does not exist (or is not a "
                            f"{'directory' if directory else 'file'}).")


def check_input_file(flag: str, path: str) -> None:
  """Raises FileNotFoundError/ValueError unless `path` is "-" or an existing file (local
  or gs://)."""
  if path == "-":
    return
  fs.check(path, flag)
  if fs.is_gcs(path):
    _check_url_exists(flag, path, directory=False)
  else:
    _check_exists(flag, path, directory=False)


def check_input_dir(flag: str, path: str) -> None:
  """Raises FileNotFoundError/ValueError unless `path` is an existing directory (local or
  gs://)."""
  fs.check(path, flag)
  if fs.is_gcs(path):
    _check_url_exists(flag, path, directory=True)
  else:
    _check_exists(flag, path, directory=True)


def check_output_dir(flag: str, path: str) -> None:
  """Raises ValueError if directory `path` cannot be created where it is asked for, and
  fs.StorageError if a gs:// one cannot be written (no bucket, no server, no access)."""
  fs.check(path, flag)
  if fs.is_gcs(path):
    fs.check_writable(path, flag)
    return
  if os.path.exists(_absolute(path)) and not os.path.isdir(_absolute(path)):
    raise ValueError(f"{flag} {path} is an existing file; give a directory.")
  above = _file_above(path)
  if above:
    raise ValueError(f"{flag} {path} is below {above}, which is a file; give a directory.")


def check_output_file(flag: str, path: str, not_same_as: str | None = None) -> None:
  """Raises ValueError if file `path` cannot be written, or would overwrite the input."""
  if path == "-":
    return
  fs.check(path, flag)
  if fs.is_gcs(path):
    if not_same_as not in (None, "-") and fs.absolute(path) == fs.absolute(not_same_as):
      raise ValueError(f"{flag} {path} is the input file; writing it would destroy the input. "
                       "Give another file.")
    fs.check_writable(fs.parent(path), flag)
    return
  if os.path.isdir(_absolute(path)):
    raise ValueError(f"{flag} {path} is a directory; give a file name.")
  above = _file_above(path)
  if above:
    raise ValueError(f"{flag} {path} is below {above}, which is a file; give another path.")
  if not_same_as not in (None, "-") and not fs.is_gcs(not_same_as) and os.path.exists(
      _absolute(path)) and os.path.samefile(
      _absolute(path), _absolute(not_same_as)):
    raise ValueError(f"{flag} {path} is the input file; writing it would destroy the input. "
                     "Give another file.")


def describe_error(error: BaseException) -> str:
  """One line for an error: the OS's errors name their file, others their first line."""
  if isinstance(error, OSError) and error.strerror and error.filename:
    return f"{error.filename}: {error.strerror}."
  text = str(error).strip()
  return text.splitlines()[0] if text else type(error).__name__


@contextlib.contextmanager
def open_input(path: str):
  """A text file (or stdin for "-"), read as UTF-8.

  Raises:
    FileNotFoundError: no such file.
    ValueError: the file is not UTF-8 text.
  """
  if path == "-":
    if sys.stdin.isatty():  # a newcomer's `--input -` without a pipe would seem to hang
      print("Reading from stdin, one input a line; end with Ctrl-D.", file=sys.stderr,
            flush=True)
    f = contextlib.nullcontext(sys.stdin)
  elif fs.is_gcs(path):
    try:
      f = contextlib.nullcontext(io.StringIO(fs.read_text(path)))
    except UnicodeDecodeError as e:
      raise ValueError(f"{path} is not UTF-8 text ({e.reason}); save it as UTF-8.") from None
  else:
    try:
      f = open(path, encoding="utf-8")
    except FileNotFoundError:
      raise FileNotFoundError(f"Input file {path} does not exist.") from None
  with f as lines:
    try:
      yield lines
    except UnicodeDecodeError as e:
      raise ValueError(f"{'stdin' if path == '-' else path} is not UTF-8 text ({e.reason}); "
                       "save it as UTF-8.") from None


@contextlib.contextmanager
def open_output(path: str, append: bool = False):
  """A file to write (its folder created if needed), or stdout for "-"; with `append`, what
  is written goes after what the file holds. In a bucket, each flush() appends what was
  written since (a GCS object cannot grow in place: fs.append_text composes it on)."""
  if path == "-":
    yield sys.stdout
    return
  if fs.is_gcs(path):
    if not append:
      fs.write_text(path, "")
    stream = _BucketAppender(path)
    yield stream
    stream.flush()
    return
  os.makedirs(os.path.dirname(_absolute(path)), exist_ok=True)
  with open(path, "a" if append else "w", encoding="utf-8") as f:
    yield f


class _BucketAppender(io.StringIO):
  """A text stream whose flush() appends what was written since to a gs:// file."""

  def __init__(self, path: str):
    super().__init__()
    self.path = path

  def flush(self) -> None:
    text = self.getvalue()
    if text:
      fs.append_text(self.path, text)
      self.seek(0)
      self.truncate()


def read_records(lines, required: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
  """(line number, record) per line: a JSON object, or plain text as {"inputs": text}.

  Raises:
    ValueError: a JSON line lacks a required field or is not valid JSON.
  """
  for number, line in enumerate(lines, start=1):
    text = line.rstrip("\n")
    if text.lstrip().startswith("{"):
      try:
        record = json.loads(text)
      except json.JSONDecodeError as e:
        raise ValueError(f"Line {number} is not valid JSON ({e.msg}); write one object a line.") from None
    else:
      record = {"inputs": text}
    missing = [k for k in required if k not in record]
    if missing:
      raise ValueError(f"Line {number} has no {missing[0]!r} field; each line needs "
                       f"{', '.join(repr(k) for k in required)}.")
    yield number, record


def write_record(f, record: dict) -> None:
  f.write(json.dumps(record, ensure_ascii=False) + "\n")


def warn(message: str) -> None:
  print(f"warning: {message}", file=sys.stderr, flush=True)
