"""Reading and writing the JSONL of `t5jax infer` and `t5jax score`."""

from __future__ import annotations

import contextlib
import json
import sys
from typing import Iterator


@contextlib.contextmanager
def open_input(path: str):
  if path == "-":
    yield sys.stdin
    return
  try:
    f = open(path, encoding="utf-8")
  except FileNotFoundError:
    raise FileNotFoundError(f"Input file {path} does not exist.") from None
  with f:
    yield f


@contextlib.contextmanager
def open_output(path: str):
  if path == "-":
    yield sys.stdout
    return
  with open(path, "w", encoding="utf-8") as f:
    yield f


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
