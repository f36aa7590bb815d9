"""Model settings that configuration changes one field at a time.

`ModelSettings` has one field per T5Config field, each None (keep what the model size
says) or the value to use. Gin binds it field by field (`ModelSettings.dtype = 'float32'`
in one file, `ModelSettings.remat_policy = 'full'` in a later one or on the command line),
so each binding changes its own field and keeps the others; a dict bound whole would be
replaced whole by the next file that binds it.
"""

from __future__ import annotations

import dataclasses
import difflib

from t5jax.model.config import T5Config

# T5Config's fields, each with the type its value must have (that of its default:
# every T5Config field has one).
_FIELDS = {f.name: f for f in dataclasses.fields(T5Config)}
_TYPES = {name: type(f.default) for name, f in _FIELDS.items()}
# What a field of each type also takes: gin writes 0 for 0.0 and (a, b) or [a, b] alike.
_ACCEPTS = {float: (int, float), tuple: (tuple, list)}


def _check_field(name: str, value) -> None:
  """Raises ValueError (one line) unless `value` has T5Config field `name`'s type."""
  want = _TYPES[name]
  wrong_bool = isinstance(value, bool) and want is not bool  # True is an int in Python
  if wrong_bool or not isinstance(value, _ACCEPTS.get(want, want)):
    raise ValueError(f"ModelSettings.{name}={value!r} is a {type(value).__name__}, not a "
                     f"{want.__name__} (e.g. {_FIELDS[name].default!r}); None keeps the model "
                     "size's value.")


def _unknown_field_error(name: str, where: str) -> ValueError:
  """The one-line error for `name`, which is no T5Config field, naming the closest ones."""
  close = difflib.get_close_matches(name, _FIELDS, n=3, cutoff=0.6)
  hint = (f"Did you mean {', '.join(close)}?" if close else
          f"Its fields are T5Config's: {', '.join(_FIELDS)}.")
  return ValueError(f"{where} has no field {name!r}. {hint}")


class _Settings:
  """The methods of ModelSettings (its fields are made from T5Config's below)."""

  def __post_init__(self):
    for name in _FIELDS:
      value = getattr(self, name)
      if value is None:
        continue
      _check_field(name, value)
      if isinstance(value, list):  # frozen and hashable, like T5Config
        object.__setattr__(self, name, tuple(value))

  def __repr__(self) -> str:  # the fields set: the others say nothing
    set_fields = ", ".join(f"{name}={value!r}" for name, value in self.changes().items())
    return f"ModelSettings({set_fields})"

  def changes(self) -> dict:
    """The fields set (not None), as T5Config keyword arguments."""
    return {name: getattr(self, name) for name in _FIELDS if getattr(self, name) is not None}


_DOC = """Changes to a model size's T5Config, one field at a time.

Every T5Config field (see its docstring) is a field here, None by default: the model size's
value is kept. A set field must have the T5Config field's type; its value is checked with the
whole T5Config when the model is made.
"""
# Made from T5Config's fields, so that every field is here and none that is not.
ModelSettings = dataclasses.make_dataclass(
    "ModelSettings",
    [(name, f"{f.type} | None", dataclasses.field(default=None)) for name, f in _FIELDS.items()],
    bases=(_Settings,), frozen=True, repr=False,
    namespace={"__module__": __name__, "__doc__": _DOC})


def from_dict(changes: dict, where: str = "TrainConfig.model_overrides") -> ModelSettings:
  """The ModelSettings of a dict of T5Config fields (the whole-dict form).

  Raises:
    ValueError: one line naming a key that is no T5Config field and the closest fields.
  """
  for name in changes:
    if name not in _FIELDS:
      raise _unknown_field_error(name, where)
  return ModelSettings(**changes)
