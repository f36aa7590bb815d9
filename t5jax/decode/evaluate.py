"""Evaluation: for every task, the teacher-forced loss and token accuracy (whether or not it
has metrics); for tasks with metrics, SeqIO's Evaluator decodes (or, for rank
classification, scores each choice), postprocesses and computes them; every decoded example
is kept for the per-example logs; a mixture gets its weighted loss and the average of its
tasks' metrics.

Runs on one device or a mesh of any size and any number of processes: the Predictor
splits each batch over the mesh, every process evaluates the same examples in the same
order, and all get every result (only process 0 writes).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Sequence

import gin
import numpy as np
import seqio

from t5jax import fs
from t5jax.data import rank_classification, registry
from t5jax.decode import decoding
from t5jax.decode.predictor import Predictor

# Registered here rather than decorated, so that errors raised by DecodeConfig in plain
# Python stay one line (gin appends its call context to errors of what it wraps).
DecodeConfig = gin.external_configurable(decoding.DecodeConfig, name="DecodeConfig")
# Per-task figures that are not the task's own metrics (not in a mixture's average).
OWN_FIGURES = ("loss", "token_accuracy", "examples")


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
    batch_size: rows per batch (rounded up to a multiple of the mesh's data-parallel
      devices).
    strategy: the decoding strategy (greedy by default, as T5 evaluates).
    decode: decode and compute the tasks' metrics; False: only the teacher-forced loss
      and token accuracy of every task (no decoding at all).
  """
  mixture_or_task: str | None = None
  split: str = "validation"
  every_steps: int = 0
  max_examples: int | None = None
  inputs_length: int = 512
  targets_length: int = 128
  batch_size: int = 32
  strategy: decoding.DecodeConfig = dataclasses.field(default_factory=DecodeConfig)
  decode: bool = True

  def __post_init__(self):
    if self.max_examples is not None and self.max_examples < 1:
      raise ValueError(f"EvalConfig.max_examples={self.max_examples} must be positive "
                       "(None: every example).")


@dataclasses.dataclass
class Evaluation:
  """What `evaluate` found.

  Attributes:
    results: {task: {metric: value}}, each task's own metrics plus `loss`,
      `token_accuracy` and `examples`; a mixture also has an entry of its own with its
      weighted `loss` and `token_accuracy` and the `average` of its tasks' metrics.
    records: {task: [one dict per decoded example]}: `inputs`, `targets`, `prediction`,
      `score`; for rank classification `choices`, `scores`, `targets` (the right choice)
      and `prediction` (the best-scored one).
  """
  results: dict[str, dict]
  records: dict[str, list[dict]]


def _tasks(mixture_or_task: str) -> tuple[list[str], bool]:
  provider = registry.get_task_or_mixture(mixture_or_task)  # one-line error if unknown
  if isinstance(provider, seqio.Mixture):
    return sorted(t.name for t in seqio.get_subtasks(provider)), True
  return [provider.name], False


def evaluate(predictor: Predictor, cfg: EvalConfig, mixture_or_task: str,
             task_weights: dict[str, float] | None = None) -> Evaluation:
  """Evaluates every task of `mixture_or_task` (see the module docstring).

  Args:
    task_weights: a mixture's per-task loss weights (LossConfig.task_weights; 1 for a task
      not named): its loss is sum_t w_t loss_sum_t / sum_t tokens_t, as training weighs it.
  """
  names, is_mixture = _tasks(mixture_or_task)
  results, records, sums = {}, {}, {}
  for name in names:
    task = seqio.get_mixture_or_task(name)
    sums[name] = _teacher_forced(predictor, cfg, task)
    results[name] = _own_figures(*sums[name])
    if cfg.decode and task.metric_fns:
      metrics, records[name] = _decoded(predictor, cfg, task)
      results[name].update(metrics)
  if is_mixture:
    weights = {n: (task_weights or {}).get(n, 1.0) for n in names}
    loss_sum = sum(weights[n] * sums[n][0] for n in names)
    tokens = sum(sums[n][1] for n in names)
    correct = sum(sums[n][2] for n in names)
    mixture = {"loss": -loss_sum / max(tokens, 1), "token_accuracy": correct / max(tokens, 1)}
    scores = [task_score(results[n]) for n in names]
    if any(s is not None for s in scores):
      mixture["average"] = float(np.mean([s for s in scores if s is not None]))
    results[mixture_or_task] = mixture
  return Evaluation(results, records)


def task_score(values: dict) -> float | None:
  """A task's one number for a mixture's average (as the T5 paper averages GLUE): the mean
  of its own metrics (BLEU; accuracy; ROUGE-1/2/L; EM and F1), None without metrics."""
  own = [v for k, v in values.items() if k not in OWN_FIGURES and isinstance(v, float)]
  return float(np.mean(own)) if own else None


def _own_figures(loglik: float, tokens: int, correct: int, examples: int) -> dict:
  return {"loss": -loglik / max(tokens, 1), "token_accuracy": correct / max(tokens, 1),
          "examples": examples}


def _model_dataset(cfg: EvalConfig, task: seqio.Task, keep=None):
  """The task's split as model features (no packing), its first max_examples examples."""
  lengths = {"inputs": cfg.inputs_length, "targets": cfg.targets_length}
  ds = task.get_dataset(lengths, split=cfg.split, shuffle=False, num_epochs=1,
                        use_cached=False)
  if keep is not None:
    ds = ds.filter(keep)
  if cfg.max_examples is not None:
    ds = ds.take(cfg.max_examples)
  return seqio.EncDecFeatureConverter(pack=False)(ds, lengths)


def _rows(predictor: Predictor, cfg: EvalConfig) -> int:
  """The batch's rows: EvalConfig.batch_size, a multiple of the data-parallel devices."""
  shards = predictor.batch_shards
  return -(-cfg.batch_size // shards) * shards


def _batches(dataset, rows: int):
  """(indices, features) batches of an enumerated model-feature dataset."""
  indices, items = [], []
  for index, features in dataset.as_numpy_iterator():
    indices.append(int(index))
    items.append(features)
    if len(items) == rows:
      yield indices, items
      indices, items = [], []
  if items:
    yield indices, items


def _stack(items, key: str, rows: int) -> np.ndarray:
  array = np.zeros((rows, items[0][key].shape[0]), np.int32)
  for i, item in enumerate(items):
    array[i] = item[key]
  return array


def _teacher_forced(predictor: Predictor, cfg: EvalConfig,
                    task: seqio.Task) -> tuple[float, int, int, int]:
  """(summed target log-probability, target tokens, tokens ranked first, examples) over
  the task's split; a rank-classification task counts its right choices only."""
  rank = rank_classification.is_rank_task(task)
  keep = (lambda ex: ex["is_correct"]) if rank else None
  rows = _rows(predictor, cfg)
  loglik, tokens, correct, examples = 0.0, 0, 0, 0
  for indices, items in _batches(_model_dataset(cfg, task, keep).enumerate(), rows):
    enc = _stack(items, "encoder_input_tokens", rows)
    tgt = _stack(items, "decoder_target_tokens", rows)
    logp_b, tokens_b, correct_b = predictor.teacher_forced(enc, tgt, task.name)
    n = len(indices)
    loglik += float(np.sum(logp_b[:n], dtype=np.float64))
    tokens += int(np.sum(tokens_b[:n]))
    correct += int(np.sum(correct_b[:n]))
    examples += n
  return loglik, tokens, correct, examples


def _decoded(predictor: Predictor, cfg: EvalConfig, task: seqio.Task):
  """The task's own metrics from SeqIO's Evaluator, and one record per example."""
  evaluator = seqio.Evaluator(
      task.name, seqio.EncDecFeatureConverter(pack=False), eval_split=cfg.split,
      sequence_length={"inputs": cfg.inputs_length, "targets": cfg.targets_length},
      num_examples=cfg.max_examples, shuffle=False, async_compute_metrics=False)
  rows = _rows(predictor, cfg)
  outputs: dict[int, tuple] = {}

  def predict_fn(dataset, *unused):
    out = []
    for indices, items in _batches(dataset, rows):
      enc = _stack(items, "encoder_input_tokens", rows)
      result = predictor.generate_tokens(enc, cfg.strategy, cfg.targets_length, task.name)
      for i, index in enumerate(indices):
        tokens = [int(t) for t in result.tokens_bl[i]]
        outputs[index] = (tokens, float(result.score_b[i]))
        # Whole fixed-length rows (padding after EOS): SeqIO stacks them into one array
        # and its vocabulary's decode stops at EOS.
        out.append((index, tokens))
    return out

  def score_fn(dataset, *unused):
    out = []
    for indices, items in _batches(dataset, rows):
      enc = _stack(items, "encoder_input_tokens", rows)
      tgt = _stack(items, "decoder_target_tokens", rows)
      scores = predictor.log_likelihood_tokens(enc, tgt, task.name)
      for i, index in enumerate(indices):
        outputs[index] = (None, float(scores[i]))
        out.append((index, float(scores[i])))
    return out

  metrics_future, _ = evaluator.evaluate(compute_metrics=True, predict_fn=predict_fn,
                                         score_fn=score_fn)
  metrics = {k: _scalar(v) for k, v in metrics_future.result().get(task.name, {}).items()}
  examples = list(evaluator.cached_task_datasets[task.name].as_numpy_iterator())
  if rank_classification.is_rank_task(task):
    if not examples:
      raise ValueError(f"rank-classification task {task.name} has no choices to score in "
                       f"split {cfg.split!r}; give its examples at least one choice.")
    return metrics, rank_classification.records(examples, [outputs[i][1] for i in
                                                           range(len(examples))])
  records = []
  for index, example in enumerate(examples):
    tokens, score = outputs.get(index, (None, None))
    records.append({"inputs": _text(example, "inputs", predictor),
                    "targets": _text(example, "targets", predictor),
                    "prediction": None if tokens is None else predictor.decode_tokens(tokens),
                    "score": score})
  return metrics, records


def _text(example: dict, key: str, predictor: Predictor) -> str:
  """A feature's text: SeqIO keeps it as `KEY_pretokenized`, else decode its tokens."""
  raw = example.get(f"{key}_pretokenized")
  if raw is not None:
    return raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
  return predictor.decode_tokens(example[key])


def _scalar(value):
  value = getattr(value, "value", value)
  return float(value) if np.ndim(value) == 0 else value


def format_table(results: dict[str, dict]) -> str:
  """A per-task table of the metrics, one row per task (and one for a mixture)."""
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


def write_records(evaluation: Evaluation, directory: str, step: int) -> list[str]:
  """Writes each task's records as DIRECTORY/TASK-STEP.jsonl (local or gs://); returns the
  paths."""
  paths = []
  for task, records in sorted(evaluation.records.items()):
    path = fs.join(directory, f"{task}-{step}.jsonl")
    fs.write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    paths.append(path)
  return paths


def check_split(names: Sequence[str], split: str) -> None:
  """Raises ValueError (one line, naming the splits there are) if a task lacks `split`."""
  for name in names:
    for task in seqio.get_subtasks(registry.get_task_or_mixture(name)):
      if split not in task.splits:
        raise ValueError(f"task {task.name} has no split {split!r}; it has "
                         f"{', '.join(sorted(task.splits))}.")
