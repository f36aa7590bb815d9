"""`t5jax infer`, `t5jax score` and `t5jax eval` on top of the Python API."""

from __future__ import annotations

import sys

from t5jax import fs
from t5jax.cli import files
from t5jax.data import registry
from t5jax.train import metrics
from t5jax.decode import evaluate as evaluate_lib
from t5jax.decode.predictor import Predictor


def _load(args) -> Predictor:
  predictor = Predictor.from_checkpoint(args.checkpoint, dtype=args.dtype)
  print(f"Loaded {args.checkpoint}: d_model {predictor.config.d_model}, "
        f"{predictor.config.num_encoder_layers}+{predictor.config.num_decoder_layers} layers, "
        f"vocabulary {predictor.vocabulary.vocab_size}", file=sys.stderr, flush=True)
  return predictor


def _report_truncation(predictor: Predictor, what: str, limit: int) -> None:
  if predictor.truncated:
    files.warn(f"{predictor.truncated} {what} longer than {limit} tokens were truncated.")


def infer(args, strategy) -> None:
  """Generates a prediction for each input line, in order, one JSON line each."""
  predictor = _load(args)
  with files.open_input(args.input) as f:
    records = list(files.read_records(f, required=("inputs",)))
  empty = [n for n, r in records if not str(r["inputs"]).strip()]
  if empty:
    files.warn(f"{len(empty)} empty input line(s) skipped (lines {empty[:10]}); their output "
                "lines say so.")
  todo = [(n, r) for n, r in records if str(r["inputs"]).strip()]
  texts = [args.prefix + str(r["inputs"]) for _, r in todo]
  outputs = predictor.generate(texts, strategy=strategy, max_input_length=args.max_input_length,
                               max_decode_length=args.max_decode_length,
                               batch_size=args.batch_size, task=args.task) if texts else []
  by_line = {n: g for (n, _), g in zip(todo, outputs)}
  with files.open_output(args.output) as out:
    for n, record in records:
      if n in by_line:
        g = by_line[n]
        record = {**record, "prediction": g.text, "score": g.score,
                  "log_likelihood": g.log_likelihood}
      else:
        record = {**record, "prediction": None, "skipped": "empty input"}
      files.write_record(out, record)
  _report_truncation(predictor, "input(s)", args.max_input_length)


def score(args, unused_strategy=None) -> None:
  """Adds "log_likelihood" (sum of target token log-probs, EOS included) to each line."""
  predictor = _load(args)
  with files.open_input(args.input) as f:
    records = [r for _, r in files.read_records(f, required=("inputs", "targets"))]
  scores = predictor.score([str(r["inputs"]) for r in records],
                           [str(r["targets"]) for r in records],
                           max_input_length=args.max_input_length,
                           max_target_length=args.max_target_length, batch_size=args.batch_size,
                           task=args.task)
  with files.open_output(args.output) as out:
    for record, value in zip(records, scores):
      files.write_record(out, {**record, "log_likelihood": value})
  _report_truncation(predictor, "input(s) or target(s)", args.max_input_length)


def eval(args, strategy) -> None:  # noqa: A001 - the subcommand's name
  """Runs SeqIO's evaluator on a task or mixture; prints a per-task table and
  writes metrics.jsonl and TensorBoard events into --output_dir."""
  predictor = _load(args)
  name = args.task or args.mixture
  cfg = evaluate_lib.EvalConfig(
      split=args.split, max_examples=args.max_examples, inputs_length=args.max_input_length,
      targets_length=args.targets_length, batch_size=args.batch_size, strategy=strategy)
  # The tasks tokenized as the model was trained: with the checkpoint's vocabulary.
  with registry.tokenized_with(name, predictor.vocabulary):
    results = evaluate_lib.evaluate(predictor, cfg, name)
  print(evaluate_lib.format_table(results), flush=True)
  output_dir = args.output_dir or fs.join(args.checkpoint, "eval")
  writer = metrics.MetricsWriter(output_dir)
  writer.write(0, evaluate_lib.flatten(results), prefix=f"eval_{args.split}")
  writer.close()
