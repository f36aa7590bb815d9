"""`t5jax infer`, `t5jax score` and `t5jax eval` on top of the Python API."""

from __future__ import annotations

import json
import sys
import time

import jax
import numpy as np

from t5jax import checkpoint, fs
from t5jax.cli import files
from t5jax.data import registry
from t5jax.train import metrics
from t5jax.decode import evaluate as evaluate_lib
from t5jax.decode.predictor import Predictor


def _load(args, mesh, step: int | None = None) -> Predictor:
  predictor = Predictor.from_checkpoint(args.checkpoint, dtype=args.dtype, mesh=mesh,
                                        param_dtype=args.param_dtype, step=step)
  where = "" if mesh is None else f", mesh {dict(mesh.shape)}"
  if _primary():
    at = "" if step is None else f" step {step}"
    print(f"Loaded {args.checkpoint}{at}: d_model {predictor.config.d_model}, "
          f"{predictor.config.num_encoder_layers}+{predictor.config.num_decoder_layers} "
          f"layers, vocabulary {predictor.vocabulary.vocab_size}{where}", file=sys.stderr,
          flush=True)
  return predictor


def _primary() -> bool:
  """Only process 0 writes (every process computes its share of each batch)."""
  return jax.process_index() == 0


def _report_truncation(predictor: Predictor, what: str, limit: int) -> None:
  if predictor.truncated:
    files.warn(f"{predictor.truncated} {what} longer than {limit} tokens were truncated.")


# Inputs decoded (and their outputs written) together: enough batches to sort by length.
CHUNK_BATCHES = 16


def infer(args, strategy, mesh=None) -> None:
  """Generates a prediction for each input line, in order, one JSON line each, written as
  each chunk of inputs is done. Run again on the same --output, it goes on after the last
  line written (--overwrite starts over)."""
  predictor = _load(args, mesh)
  with files.open_input(args.input) as f:
    records = list(files.read_records(f, required=("inputs",)))
  done = _lines_done(args, records) if _primary() else 0
  if jax.process_count() > 1:  # every process decodes the same chunks
    from jax.experimental import multihost_utils
    done = int(multihost_utils.broadcast_one_to_all(done))
  empty = [n for n, r in records[done:] if not str(r["inputs"]).strip()]
  if empty and _primary():
    files.warn(f"{len(empty)} empty input line(s) skipped (lines {empty[:10]}); their output "
               "lines say so.")
  several = args.num_return_sequences or args.num_samples
  prefixed = any("targets_prefix" in r for _, r in records)
  for n, record in records[done:]:  # before anything is decoded
    if record.get("targets_prefix"):
      try:
        predictor.encode_prefixes([str(record["targets_prefix"])], 1, args.max_decode_length)
      except ValueError as e:
        raise ValueError(f"{args.input} line {n}: {e}") from None
  chunk = max(1, args.batch_size) * CHUNK_BATCHES
  with files.open_output(args.output, append=done > 0) as out:
    for start in range(done, len(records), chunk):
      part = records[start:start + chunk]
      todo = [(n, r) for n, r in part if str(r["inputs"]).strip()]
      texts = [args.prefix + str(r["inputs"]) for _, r in todo]
      prefixes = [str(r.get("targets_prefix") or "") for _, r in todo] if prefixed else None
      outputs = predictor.generate_n(
          texts, several or 1, strategy=strategy, max_input_length=args.max_input_length,
          max_decode_length=args.max_decode_length, batch_size=args.batch_size,
          task=args.task, targets_prefix=prefixes) if texts else []
      by_line = {n: g for (n, _), g in zip(todo, outputs)}
      if _primary():
        for n, record in part:
          if n in by_line:
            best = by_line[n][0]
            record = {**record, "prediction": best.text, "score": best.score,
                      "log_likelihood": best.log_likelihood}
            if several:
              record.update(predictions=[g.text for g in by_line[n]],
                            scores=[g.score for g in by_line[n]])
          else:
            record = {**record, "prediction": None, "skipped": "empty input"}
          files.write_record(out, record)
        out.flush()
  if _primary():
    _report_truncation(predictor, "input(s)", args.max_input_length)


def _lines_done(args, records) -> int:
  """How many of the input's lines --output already holds (0 to start over). A last line
  cut short by a killed run is dropped; lines for other inputs are an error."""
  if args.output == "-" or args.overwrite or not fs.exists(args.output):
    return 0
  lines = fs.read_text(args.output).split("\n")
  complete = []
  for line in lines[:-1]:  # the text after the last newline was not finished
    try:
      complete.append(json.loads(line))
    except json.JSONDecodeError:
      break
  for (_, record), written in zip(records, complete):
    if written.get("inputs") != record["inputs"]:
      raise ValueError(f"--output {args.output} holds lines for other inputs than --input "
                       f"{args.input}; give another --output, or --overwrite to start over.")
  if len(complete) > len(records):
    raise ValueError(f"--output {args.output} holds {len(complete)} lines but --input has "
                     f"{len(records)}; give another --output, or --overwrite to start over.")
  text = "".join(line + "\n" for line in lines[:len(complete)])
  if text != fs.read_text(args.output):
    fs.write_text(args.output, text)  # drop a line a killed run left half-written
  if complete:
    files.warn(f"--output {args.output} holds the first {len(complete)} of {len(records)} "
               "outputs: going on from there (--overwrite starts over).")
  return len(complete)


def score(args, unused_strategy=None, mesh=None) -> None:
  """Adds "log_likelihood" (sum of target token log-probs, EOS included) to each line;
  with --token_scores, each target token and its log-probability too."""
  predictor = _load(args, mesh)
  with files.open_input(args.input) as f:
    records = [r for _, r in files.read_records(f, required=("inputs", "targets"))]
  pairs = ([str(r["inputs"]) for r in records], [str(r["targets"]) for r in records])
  lengths = dict(max_input_length=args.max_input_length,
                 max_target_length=args.max_target_length, batch_size=args.batch_size,
                 task=args.task)
  scored = predictor.score_with_tokens(*pairs, **lengths)  # one pass gives both
  if not _primary():
    return
  with files.open_output(args.output) as out:
    for record, (value, ids, logprobs) in zip(records, scored):
      record = {**record, "log_likelihood": value}
      if args.token_scores:
        record.update(target_tokens=predictor.pieces(ids), token_scores=logprobs)
      files.write_record(out, record)
  _report_truncation(predictor, "input(s) or target(s)", args.max_input_length)


def eval(args, strategy, mesh=None) -> None:  # noqa: A001 - the subcommand's name
  """Evaluates a task or mixture: prints a per-task table; writes metrics.jsonl,
  TensorBoard events and each decoded task's TASK-STEP.jsonl into --output_dir. The latest
  checkpoint; with --all_checkpoints every one not yet evaluated there, oldest first; with
  --watch those and then each new one as the run saves it, until its last step."""
  output_dir = args.output_dir or fs.join(args.checkpoint, "eval")
  if not (args.all_checkpoints or args.watch):
    _evaluate_step(args, strategy, mesh, checkpoint.latest_step(args.checkpoint), output_dir)
    return
  waited_since = time.time()
  while True:
    step, final = _next_step(args, output_dir)
    if step is not None:
      _evaluate_step(args, strategy, mesh, step, output_dir)
      waited_since = time.time()
      continue
    if not args.watch or final:
      if _primary():
        files.warn("every checkpoint is evaluated" + (
            f" (the run's last step, {final})" if final else "") + f"; results in {output_dir}")
      return
    if time.time() - waited_since > args.watch_timeout:
      raise TimeoutError(f"--watch: no new checkpoint in {args.checkpoint} for "
                         f"{args.watch_timeout:.0f} s (--watch_timeout); stopping.")
    time.sleep(args.watch_interval)


def _next_step(args, output_dir: str) -> tuple[int | None, int | None]:
  """(the oldest checkpoint step not yet in output_dir's metrics.jsonl, or None; the run's
  last step if that one is evaluated, else None). Decided by process 0 and shared, so that
  every process evaluates the same step (Orbax's reads run on all of them together)."""
  step, final = -1, -1
  steps = checkpoint.all_steps(args.checkpoint)
  last = checkpoint.read_meta(args.checkpoint, steps[-1]).get("num_steps") if steps else None
  if _primary():
    done = _evaluated_steps(output_dir, f"eval_{args.split}", args.task or args.mixture)
    todo = [s for s in steps if s not in done]
    step = todo[0] if todo else -1
    final = steps[-1] if steps and not todo and last == steps[-1] else -1
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    step, final = (int(x) for x in multihost_utils.broadcast_one_to_all(
        np.array([step, final], np.int64)))
  return (None if step < 0 else step), (None if final < 0 else final)


def _evaluated_steps(output_dir: str, split: str, name: str) -> set[int]:
  """The steps whose evaluation of task or mixture `name` on `split` metrics.jsonl holds."""
  path = fs.join(output_dir, "metrics.jsonl")
  if not fs.exists(path):
    return set()
  steps = set()
  for line in fs.read_text(path).splitlines():
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue  # a line cut short by a killed evaluation: that step is evaluated again
    if record.get("split") == split and f"{name}/loss" in record:
      steps.add(int(record["step"]))
  return steps


def _evaluate_step(args, strategy, mesh, step: int, output_dir: str) -> None:
  predictor = _load(args, mesh, step)
  name = args.task or args.mixture
  cfg = evaluate_lib.EvalConfig(
      split=args.split, max_examples=args.max_examples, inputs_length=args.max_input_length,
      targets_length=args.targets_length, batch_size=args.batch_size, strategy=strategy,
      decode=not args.loss_only)
  # The tasks tokenized as the model was trained: with the checkpoint's vocabulary.
  with registry.tokenized_with(name, predictor.vocabulary):
    evaluation = evaluate_lib.evaluate(predictor, cfg, name)
  if not _primary():
    return
  print(f"step {step}\n{evaluate_lib.format_table(evaluation.results)}", flush=True)
  # Per-example logs first: a step is done once its metrics line is written.
  evaluate_lib.write_records(evaluation, output_dir, step)
  writer = metrics.MetricsWriter(output_dir)
  writer.write(step, evaluate_lib.flatten(evaluation.results), prefix=f"eval_{args.split}")
  writer.close()
