"""A task's class labels, read from its training targets: what prompt tuning's
class-label initialisation (Lester et al. 2021) starts the prompt from."""

from __future__ import annotations

import collections

import numpy as np

from t5jax.data import registry, task_store

# Targets read per task, and the most distinct targets a classification task has.
SCAN_EXAMPLES = 1000
MAX_LABELS = 50


def class_labels(task_name: str, max_labels: int = MAX_LABELS) -> list[np.ndarray]:
  """The token ids (EOS dropped) of each distinct target among the first SCAN_EXAMPLES
  training examples, most frequent first, when there are at most `max_labels` of them;
  [] for a task whose targets are free text (translation, summaries, ...)."""
  examples = task_store.ensure(registry.get_task_or_mixture(task_name), "train")
  n = min(SCAN_EXAMPLES, examples.num_examples)
  counts = collections.Counter(tuple(int(t) for t in target if t > 1)
                               for target in examples.examples("targets", np.arange(n)))
  if len(counts) > max_labels:
    return []
  return [np.asarray(label, np.int32) for label, _ in counts.most_common() if label]
