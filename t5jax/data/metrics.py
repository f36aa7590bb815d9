"""Metric functions, SeqIO style: `fn(targets, predictions) -> {name: value}`.

Targets are single strings/ints, or lists of references for the multi-reference tasks.
"""

import collections
import functools
import re
import string
from typing import Sequence, Union

import numpy as np

Refs = Union[str, Sequence[str]]


def _as_list(refs: Refs) -> list[str]:
  return [refs] if isinstance(refs, str) else list(refs)


def bleu(targets: Sequence[str], predictions: Sequence[str]) -> dict[str, float]:
  """Corpus BLEU (sacrebleu, 13a tokenization), 0-100."""
  import sacrebleu  # pylint: disable=g-import-not-at-top  (imported when scored: see _scorer)
  return {"bleu": sacrebleu.corpus_bleu(list(predictions), [list(targets)]).score}


def accuracy(targets: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
  """Percentage of exact matches, 0-100."""
  return {"accuracy": 100.0 * float(np.mean(np.asarray(targets) == np.asarray(predictions)))}


def matthews_corrcoef(targets: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
  """Matthews correlation of binary labels x 100 (predictions of -1 count as wrong, i.e. 1 - t)."""
  t = np.asarray(targets) == 1
  p = np.asarray(predictions)
  p = np.where(p < 0, ~t, p == 1)  # An unparseable prediction is always wrong.
  tp, tn = float(np.sum(t & p)), float(np.sum(~t & ~p))
  fp, fn = float(np.sum(~t & p)), float(np.sum(t & ~p))
  denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
  return {"matthews_corrcoef": 100.0 * ((tp * tn - fp * fn) / denom if denom else 0.0)}


@functools.cache
def _scorer():
  """The ROUGE scorer, built at the first score: its import (NLTK, SciPy) would otherwise be
  part of every command's start, evaluation or not."""
  from rouge_score import rouge_scorer  # pylint: disable=g-import-not-at-top
  return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)


def rouge(targets: Sequence[Refs], predictions: Sequence[str]) -> dict[str, float]:
  """Mean ROUGE-1/2/L F-measure x 100, each prediction scored against its best reference."""
  totals = collections.defaultdict(float)
  for refs, prediction in zip(targets, predictions):
    scores = _scorer().score_multi(_as_list(refs), prediction)
    for name, score in scores.items():
      totals[name] += score.fmeasure
  n = max(len(predictions), 1)
  return {name: 100.0 * total / n for name, total in totals.items()}


def _normalize_answer(text: str) -> str:
  # The official SQuAD v1.1 normalisation.
  text = text.lower()
  text = "".join(ch for ch in text if ch not in set(string.punctuation))
  text = re.sub(r"\b(a|an|the)\b", " ", text)
  return " ".join(text.split())


def _f1(reference: str, prediction: str) -> float:
  ref, pred = _normalize_answer(reference).split(), _normalize_answer(prediction).split()
  common = collections.Counter(ref) & collections.Counter(pred)
  overlap = sum(common.values())
  if overlap == 0:
    return 0.0
  precision, recall = overlap / len(pred), overlap / len(ref)
  return 2 * precision * recall / (precision + recall)


def squad(targets: Sequence[Refs], predictions: Sequence[str]) -> dict[str, float]:
  """SQuAD exact match and F1 x 100, max over each question's answers."""
  em = f1 = 0.0
  for refs, prediction in zip(targets, predictions):
    refs = _as_list(refs)
    em += max(float(_normalize_answer(r) == _normalize_answer(prediction)) for r in refs)
    f1 += max(_f1(r, prediction) for r in refs)
  n = max(len(predictions), 1)
  return {"em": 100.0 * em / n, "f1": 100.0 * f1 / n}
