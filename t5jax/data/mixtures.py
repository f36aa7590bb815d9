"""Mixing-rate formulas of the T5 paper (sec. 3.5.2) and t5jax's registered mixtures.

Rates are given to SeqIO as functions of the task, evaluated when a pipeline is built, so that
the example counts come from the prepared TFDS metadata (split info) without iterating data.
"""

import functools
from typing import Sequence

import numpy as np
import seqio

from t5jax.data import tasks

# Cap K on a task's example count: the shipped sets are small, so a cap of 2^14 keeps SST-2
# (67k) from dominating while leaving the smaller sets at their natural proportions.
DEFAULT_CAP = 2**14


def examples_proportional_rates(counts: Sequence[float], cap: float) -> np.ndarray:
  """r_m = min(e_m, K) / sum_n min(e_n, K)."""
  capped = np.minimum(np.asarray(counts, dtype=np.float64), cap)
  return capped / capped.sum()


def temperature_scaled_rates(counts: Sequence[float], cap: float,
                             temperature: float) -> np.ndarray:
  """Examples-proportional rates raised to 1/T and renormalised (T=1: proportional)."""
  scaled = examples_proportional_rates(counts, cap) ** (1.0 / temperature)
  return scaled / scaled.sum()


def equal_rates(num_tasks: int) -> np.ndarray:
  """Every task sampled equally often."""
  return np.full(num_tasks, 1.0 / num_tasks)


def _train_examples(task: seqio.Task) -> int:
  return int(task.num_input_examples("train"))


def _capped_rate(task: seqio.Task, cap: float, temperature: float = 1.0) -> float:
  # min(e, K)^(1/T) is proportional to the temperature-scaled rate, and SeqIO normalises the
  # rates of a mixture, so no task needs to know the others.
  return float(min(_train_examples(task), cap)) ** (1.0 / temperature)


def examples_proportional(cap: float = DEFAULT_CAP):
  """A SeqIO rate function for examples-proportional mixing with cap K."""
  return functools.partial(_capped_rate, cap=cap)


def temperature_scaled(temperature: float, cap: float = DEFAULT_CAP):
  """A SeqIO rate function for temperature-scaled mixing."""
  return functools.partial(_capped_rate, cap=cap, temperature=temperature)


def normalized_rates(mixture: seqio.Mixture) -> dict[str, float]:
  """The mixture's sampling probability of each task, by task name."""
  rates = {t.name: float(mixture.get_rate(t)) for t in mixture.tasks}
  total = sum(rates.values())
  return {name: rate / total for name, rate in sorted(rates.items())}


GLUE_TASKS = ("glue_cola", "glue_sst2", "glue_rte")

MIXTURES = {
    # name: (tasks, rate function, description)
    "multi30k_mix": (("multi30k_en_fr", "multi30k_en_de"), 1.0, "equal"),
    "glue_mix": (GLUE_TASKS, examples_proportional(), f"examples-proportional, K={DEFAULT_CAP}"),
    "supervised_mix": (tasks.SUPERVISED_TASKS, examples_proportional(),
                       f"examples-proportional, K={DEFAULT_CAP}"),
    "multitask_mix": (tasks.SUPERVISED_TASKS + tasks.PRETRAINING_TASKS,
                      temperature_scaled(2.0), f"temperature-scaled, T=2, K={DEFAULT_CAP}"),
}


def register() -> None:
  """(Re-)registers every t5jax mixture."""
  for name, (task_names, rate, _) in MIXTURES.items():
    if name in seqio.MixtureRegistry.names():
      seqio.MixtureRegistry.remove(name)
    seqio.MixtureRegistry.add(name, [(t, rate) for t in task_names])


register()
