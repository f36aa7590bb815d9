"""One lookup for task and mixture names, with a helpful error for unknown ones; and the
same tasks tokenized with another vocabulary (InputSpec.vocabulary, `t5jax eval` of a
checkpoint trained on one)."""

import contextlib
import copy
import dataclasses
import difflib
from typing import Iterator, Union

import seqio

from t5jax.data import vocab


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


def _retokenized_task(task: seqio.Task, vocabulary: seqio.Vocabulary) -> seqio.Task:
  new = copy.copy(task)
  # seqio.Task keeps its features in _output_features (seqio is pinned in pyproject.toml).
  new._output_features = {  # pylint: disable=protected-access
      k: dataclasses.replace(f, vocabulary=vocabulary) for k, f in task.output_features.items()}
  return new


def _retokenized_mixture(mixture: seqio.Mixture, tasks: dict) -> seqio.Mixture:
  new = copy.copy(mixture)
  new._tasks = [tasks.get(t.name, t) for t in mixture._tasks]  # pylint: disable=protected-access
  new._sub_mixtures = [_retokenized_mixture(m, tasks)  # pylint: disable=protected-access
                       for m in mixture._sub_mixtures]  # pylint: disable=protected-access
  return new


def _replace(registry, name: str, provider) -> None:
  registry.remove(name)
  registry.add_provider(name, provider)


@contextlib.contextmanager
def tokenized_with(mixture_or_task: str, vocabulary: seqio.Vocabulary) -> Iterator[None]:
  """While active, `mixture_or_task` and its tasks are registered under their own names
  tokenizing every feature with `vocabulary` (same sources, preprocessors, metrics); the
  registrations are restored afterwards. Their example stores differ by vocabulary."""
  provider = get_task_or_mixture(mixture_or_task)
  originals = {t.name: t for t in seqio.get_subtasks(provider)
               if not all(vocab.same(f.vocabulary, vocabulary)
                          for f in t.output_features.values())}
  if not originals:
    yield
    return
  tasks = {name: _retokenized_task(t, vocabulary) for name, t in originals.items()}
  for name, task in tasks.items():
    _replace(seqio.TaskRegistry, name, task)
  if isinstance(provider, seqio.Mixture):
    _replace(seqio.MixtureRegistry, mixture_or_task, _retokenized_mixture(provider, tasks))
  try:
    yield
  finally:
    for name, task in originals.items():
      _replace(seqio.TaskRegistry, name, task)
    if isinstance(provider, seqio.Mixture):
      _replace(seqio.MixtureRegistry, mixture_or_task, provider)
