"""Rank classification (t5's `rank_classification`): a multiple-choice example becomes one
scored example per choice, the model's log-likelihood of each choice is its score, and the
prediction is the best-scored choice. It evaluates a model on classes without decoding:
no answer can fall outside the choices.

    preprocessor(inputs_fn, choices_fn, correct_fn)   one example per choice
    rank_accuracy                                     the metric (SeqIO calls it with scores)
    records(examples, scores)                         one log line per original example
"""

from __future__ import annotations

import collections
from typing import Mapping, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

# Features a per-choice example carries besides inputs/targets.
INDEX, CHOICE, IS_CORRECT = "idx", "choice", "is_correct"


def preprocessor(inputs_fn, choices_fn, correct_fn):
  """A SeqIO preprocessor: each source example (numbered in order) becomes one example per
  choice, {"inputs", "targets": the choice, "idx", "choice", "is_correct"}.

  Args:
    inputs_fn: example -> the inputs string (tf).
    choices_fn: example -> a 1-D string tensor of the choices (at least one).
    correct_fn: example -> the index of the right choice (tf int).
  """

  def fn(dataset: tf.data.Dataset) -> tf.data.Dataset:
    def expand(index, ex):
      choices = choices_fn(ex)
      n = tf.size(choices)
      correct = tf.cast(correct_fn(ex), tf.int32)
      return tf.data.Dataset.from_tensor_slices({
          "inputs": tf.fill([n], inputs_fn(ex)),
          "targets": choices,
          INDEX: tf.fill([n], tf.cast(index, tf.int32)),
          CHOICE: tf.range(n),
          IS_CORRECT: tf.equal(tf.range(n), correct),
      })
    return dataset.enumerate().flat_map(expand)

  fn.rank_classification = True  # what is_rank_task looks for
  return fn


def is_rank_task(task: seqio.Task) -> bool:
  return any(getattr(step, "rank_classification", False) for step in task.preprocessors)


def postprocess(output, example: Optional[Mapping] = None, is_target: bool = False):
  """For targets, (source example index, is this choice right?): what rank_accuracy groups
  the scores by."""
  if is_target and example is not None:
    return int(example[INDEX]), bool(example[IS_CORRECT])
  return output


def rank_accuracy(targets: Sequence[tuple[int, bool]], scores: Sequence[float]) -> dict:
  """Percentage of source examples whose best-scored choice is the right one."""
  best = {}
  for (index, is_correct), score in zip(targets, scores):
    if index not in best or score > best[index][0]:
      best[index] = (score, is_correct)
  return {"accuracy": 100.0 * float(np.mean([c for _, c in best.values()])) if best else 0.0}


def records(examples: Sequence[Mapping], scores: Sequence[float]) -> list[dict]:
  """One record per source example: its inputs, the choices with their scores, `targets`
  (the right choice) and `prediction` (the best-scored one).

  Raises:
    ValueError: a source example had no choices (so nothing could be scored).
  """
  groups = collections.defaultdict(list)
  for example, score in zip(examples, scores):
    groups[int(example[INDEX])].append((int(example[CHOICE]), example, score))
  out = []
  for index in sorted(groups):
    items = sorted(groups[index], key=lambda item: item[0])
    choices = [_text(e["targets_pretokenized"]) for _, e, _ in items]
    item_scores = [float(s) for _, _, s in items]
    right = [c for c, (_, e, _) in zip(choices, items) if bool(e[IS_CORRECT])]
    out.append({"inputs": _text(items[0][1]["inputs_pretokenized"]), "choices": choices,
                "scores": item_scores, "targets": right[0] if right else None,
                "prediction": choices[int(np.argmax(item_scores))]})
  return out


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)
