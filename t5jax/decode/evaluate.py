"""Evaluation with SeqIO's Evaluator: decode, postprocess, each task's metrics,
plus the teacher-forced loss per task."""

from __future__ import annotations

import dataclasses

import gin
import numpy as np
import seqio

from t5jax.decode import decoding
from t5jax.data import registry
from t5jax.decode.predictor import Predictor

# Registered here rather than decorated, so that errors raised by DecodeConfig in plain
# Python stay one line (gin appends its call context to errors of what it wraps).
DecodeConfig = gin.external_configurable(decoding.DecodeConfig, name="DecodeConfig")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """What and how to evaluate (also used by the training loop).

  Attributes:
    mixture_or_task: the task or mixture to evaluate; None means the training one.
    split: the split to read.
    every_steps: evaluate during training every this many steps (0: never).
    max_examples: evaluate on at most this many examples per task (None: all).
    inputs_length, targets_length: truncation lengths (targets_length also
      bounds the decode length).
    batch_size: decoding batch size.
    strategy: the decoding strategy (greedy by default, as T5 evaluates).
  """
  mixture_or_task: str | None = None
  split: str = "validation"
  every_steps: int = 0
  max_examples: int | None = None
  inputs_length: int = 512
  targets_length: int = 128
  batch_size: int = 32
  strategy: decoding.DecodeConfig = dataclasses.field(default_factory=DecodeConfig)


def _batches(dataset, batch_size: int):
  """(indices, features) batches of an enumerated SeqIO model-feature dataset."""
  indices, rows = [], []
  for index, features in dataset.as_numpy_iterator():
    indices.append(int(index))
    rows.append(features)
    if len(rows) == batch_size:
      yield indices, rows
      indices, rows = [], []
  if rows:
    yield indices, rows


def _stack(rows, key, batch_size):
  array = np.zeros((batch_size, rows[0][key].shape[0]), np.int32)
  for i, row in enumerate(rows):
    array[i] = row[key]
  return array


def evaluate(predictor: Predictor, cfg: EvalConfig, mixture_or_task: str) -> dict[str, dict]:
  """Evaluates every task of `mixture_or_task`; returns {task: {metric: value}}.

  Metrics are the tasks' own (BLEU, ROUGE, accuracy, MCC, EM/F1 ...) computed by
  seqio.Evaluator on decoded and postprocessed outputs; `loss` is the mean
  teacher-forced cross-entropy per target token (EOS included).
  """
  provider = registry.get_task_or_mixture(mixture_or_task)  # one-line error if unknown
  names = ([t.name for t in provider.tasks] if isinstance(provider, seqio.Mixture)
           else [provider.name])
  # One evaluator per task, so that each task is decoded with its own parameters
  # in a model with task slots.
  return {name: _evaluate_task(predictor, cfg, name) for name in sorted(names)}


def _evaluate_task(predictor: Predictor, cfg: EvalConfig, task: str) -> dict:
  evaluator = seqio.Evaluator(
      task, seqio.EncDecFeatureConverter(pack=False), eval_split=cfg.split,
      sequence_length={"inputs": cfg.inputs_length, "targets": cfg.targets_length},
      num_examples=cfg.max_examples, shuffle=False, async_compute_metrics=False)
  if not evaluator.eval_tasks:
    return {}
  # Teacher-forced log-likelihood and target tokens, from whichever of predict_fn and
  # score_fn SeqIO calls (a task's metrics may need either or both).
  totals = {"predict": [0.0, 0], "score": [0.0, 0]}

  def add_loss(kind, scores, tgt, n):
    totals[kind][0] += float(np.sum(scores[:n]))
    totals[kind][1] += int(np.sum(tgt[:n] > 0))

  def predict_fn(dataset, *unused):
    out = []
    for indices, rows in _batches(dataset, cfg.batch_size):
      enc = _stack(rows, "encoder_input_tokens", cfg.batch_size)
      tgt = _stack(rows, "decoder_target_tokens", cfg.batch_size)
      result = predictor.generate_tokens(enc, cfg.strategy, cfg.targets_length, task)
      add_loss("predict", predictor.log_likelihood_tokens(enc, tgt, task), tgt, len(indices))
      # Whole fixed-length rows (padding after EOS): SeqIO stacks them into one array
      # and its vocabulary's decode stops at EOS.
      for i, index in enumerate(indices):
        out.append((index, [int(t) for t in result.tokens_bl[i]]))
    return out

  def score_fn(dataset, *unused):
    out = []
    for indices, rows in _batches(dataset, cfg.batch_size):
      enc = _stack(rows, "encoder_input_tokens", cfg.batch_size)
      tgt = _stack(rows, "decoder_target_tokens", cfg.batch_size)
      scores = predictor.log_likelihood_tokens(enc, tgt, task)
      add_loss("score", scores, tgt, len(indices))
      out.extend((index, float(scores[i])) for i, index in enumerate(indices))
    return out

  metrics_future, _ = evaluator.evaluate(compute_metrics=True, predict_fn=predict_fn,
                                         score_fn=score_fn)
  values = {k: _scalar(v) for k, v in metrics_future.result().get(task, {}).items()}
  loglik, tokens = totals["predict"] if totals["predict"][1] else totals["score"]
  values["loss"] = -loglik / max(tokens, 1)
  values["examples"] = sum(1 for _ in evaluator.cached_task_datasets[task])
  return values


def _scalar(value):
  value = getattr(value, "value", value)
  return float(value) if np.ndim(value) == 0 else value


def format_table(results: dict[str, dict]) -> str:
  """A per-task table of the metrics, one row per task."""
  lines = []
  for task, values in sorted(results.items()):
    cells = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                      for k, v in sorted(values.items()))
    lines.append(f"{task:<24} {cells}")
  return "\n".join(lines)


def flatten(results: dict[str, dict]) -> dict[str, float]:
  """{"task/metric": value} for logging."""
  return {f"{task}/{k}": v for task, values in results.items() for k, v in values.items()
          if isinstance(v, (int, float))}
