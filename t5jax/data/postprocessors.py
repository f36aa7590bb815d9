"""Postprocessors: decoded model output (or target) -> what the task's metrics compare.

SeqIO calls `fn(text, example=..., is_target=...)`; for targets `example` is the preprocessed
example, so multi-reference tasks return all references from it.
"""

from typing import Mapping, Optional, Sequence


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def label_to_int(label_names: Sequence[str]):
  """Returns a postprocessor mapping a label string to its index, or -1 if unknown."""
  index = {name: i for i, name in enumerate(label_names)}

  def fn(output, example: Optional[Mapping] = None, is_target: bool = False) -> int:
    del example, is_target
    return index.get(_text(output).strip(), -1)

  return fn


def references(key: str):
  """Returns a postprocessor giving all references from `example[key]` for targets."""

  def fn(output, example: Optional[Mapping] = None, is_target: bool = False):
    if is_target and example is not None and key in example:
      return [_text(r) for r in example[key]]
    return _text(output).strip()

  return fn


def strip_text(output, example: Optional[Mapping] = None, is_target: bool = False) -> str:
  """Decoded bytes -> stripped str."""
  del example, is_target
  return _text(output).strip()
