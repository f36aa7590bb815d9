"""One lookup for task and mixture names, with a helpful error for unknown ones."""

import difflib
from typing import Union

import seqio


def registered_names() -> list[str]:
  """All registered task and mixture names, sorted."""
  return sorted(set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))


def get_task_or_mixture(name: str) -> Union[seqio.Task, seqio.Mixture]:
  """Returns the registered task or mixture `name`.

  Importing this module does not register t5jax's own tasks; `t5jax.data.tasks` and
  `t5jax.data.mixtures` do, and this function imports them first.

  Raises:
    ValueError: (one line) if `name` is not registered, naming the closest registered names.
  """
  from t5jax.data import mixtures  # pylint: disable=g-import-not-at-top,unused-import
  if name in seqio.MixtureRegistry.names():
    return seqio.get_mixture_or_task(name)
  if name in seqio.TaskRegistry.names():
    return seqio.get_mixture_or_task(name)
  names = registered_names()
  close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
  hint = f"did you mean {', '.join(close)}?" if close else f"registered: {', '.join(names)}"
  raise ValueError(
      f"unknown task or mixture {name!r}; {hint} (run `t5jax tasks` to list them, or import"
      " the module that registers your own task)")
