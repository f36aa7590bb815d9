"""The training loop: one linear function from configuration to a trained model. The step
is assembled in step_builder, where a run starts (resume, warm start) is resume's."""

from __future__ import annotations

import dataclasses
import json
import time

import jax
import numpy as np

from t5jax import checkpoint, fs
from t5jax.decode import decoding, evaluate
from t5jax.train import metrics, preemption, resume, run_config, run_vocabulary
from t5jax.train import step as train_step, step_builder
from t5jax.parallel import partitioning
from t5jax import config as gin_config
from t5jax.data import pipeline, vocab
from t5jax.model import config as model_config


def train(run_dir: str, config: run_config.TrainConfig | None = None) -> list[dict]:
  """Trains (resuming from RUN_DIR/checkpoints if there are any) on the vocabulary of its
  tasks (or InputSpec.vocabulary's), which the run directory records; returns the logged
  metric summaries."""
  config = config or run_config.TrainConfig()
  with run_vocabulary.for_run(config.data, config.eval.mixture_or_task,
                              config.checkpoint.init_from) as vocabulary:
    return _train(run_dir, config, vocabulary)


def _train(run_dir: str, config: run_config.TrainConfig, vocabulary) -> list[dict]:
  primary = jax.process_index() == 0
  setup = step_builder.build(config, vocabulary=vocabulary)
  mesh, model, task_names = setup.mesh, setup.model, setup.task_names
  _check_prompt_rows(model.config, config.data)
  ckpt = checkpoint.Checkpointer(fs.join(run_dir, "checkpoints"), config.checkpoint)
  with partitioning.sharding_context(mesh):
    state, data_local = resume.initial_state(setup, ckpt, vocabulary)
    step_fn = setup.jit_step()

  writer = metrics.MetricsWriter(run_dir, enabled=primary)
  if primary:
    gin_config.write_operative_config(run_dir)
  start = int(state.step)
  batches = pipeline.make_batches(config.data, config.batch_size, jax.process_index(),
                                  jax.process_count(), state=data_local)
  metrics.print_line(
      f"Training {config.model} ({_num_params(state.params):,} parameters) on "
      f"{config.data.mixture_or_task} {task_names} from step {start} to {config.num_steps}; "
      f"mesh {dict(mesh.shape)}, batch {config.batch_size}; logs in {run_dir}", primary)

  meta = resume.checkpoint_meta(setup, ckpt,
                                vocab.record(vocabulary, run_dir if primary else None))
  patience = resume.patience(config, ckpt, start)
  summaries, window = [], []
  window_start = run_start = time.time()
  every = config.checkpoint.every_steps
  failure = None  # this process's failed write, which stops every process at the next step
  with partitioning.sharding_context(mesh), preemption.PreemptionGuard() as guard:
    for step in range(start, config.num_steps):
      batch = partitioning.host_batch_to_global(next(batches), mesh)
      state, step_metrics = step_fn(state, batch)
      window.append(step_metrics)
      done = step + 1
      stop = guard.requested(failed=failure is not None)
      if guard.failed_anywhere:
        raise _stopped(failure, ckpt, run_dir)
      if done % config.log_every == 0 or done == config.num_steps or stop:
        window = jax.device_get(window)
        _check_finite(window, done - len(window) + 1, ckpt)
        now = time.time()
        summary = metrics.summarize(window, task_names, now - window_start)
        eta = (now - run_start) / (done - start) * (config.num_steps - done)
        failure = failure or _write(lambda: writer.write(done, summary), ckpt, run_dir)
        metrics.print_line(
            metrics.progress_line(done, config.num_steps, summary, task_names, eta), primary)
        summaries.append({"step": done, **summary})
        window, window_start = [], time.time()
      eval_metrics, early = None, False
      if config.eval.every_steps and (done % config.eval.every_steps == 0
                                      or done == config.num_steps):
        evaluation = _evaluate(config, model, state.params, vocabulary, mesh, done, primary)
        eval_metrics = evaluate.flatten(evaluation.results)
        failure = failure or _write(
            lambda: _write_evaluation(writer, evaluation, eval_metrics, run_dir, done, primary),
            ckpt, run_dir)
        if patience is not None:
          early = patience.update(done, eval_metrics)
          meta["early_stopping"] = patience.state()
      if (stop or early or done == config.num_steps or (every and done % every == 0)
          or (eval_metrics and config.checkpoint.best_metric)):
        _check_finite(jax.device_get(window), done - len(window) + 1, ckpt)
        ckpt.save(state, {**meta, "data": {**meta["data"], "next_step": done}},
                  metrics=eval_metrics,
                  data_position=resume.global_position(batches.state(), config, mesh))
      if early:
        metrics.print_line(patience.reason(done), primary)
        break
      if stop:
        _close(ckpt, guard, failure, run_dir)
        writer.close()
        metrics.print_line(
            f"{guard.signal_name} received: saved step {done} in {ckpt.directory}; run the "
            "same command again to resume.", primary)
        return summaries
    _close(ckpt, guard, failure, run_dir)

  if config.num_sample_predictions and primary:
    _sample_predictions(run_dir, model, state.params, config, vocabulary)
  writer.close()
  return summaries


def _write_evaluation(writer, evaluation, flat: dict, run_dir: str, step: int,
                      primary: bool) -> None:
  """The `eval` metrics record, and each decoded task's RUN_DIR/eval/TASK-STEP.jsonl."""
  writer.write(step, flat, prefix="eval")
  if primary:
    evaluate.write_records(evaluation, fs.join(run_dir, "eval"), step)


def _write(write, ckpt: checkpoint.Checkpointer, run_dir: str) -> fs.StorageError | None:
  """Runs `write` (into the run directory). A failure (after fs's retries) stops the run:
  at once with one process; with several, it is returned, and every process stops at the
  next step boundary (PreemptionGuard.requested) rather than the others waiting in a
  collective for one that is gone."""
  try:
    write()
  except fs.StorageError as e:
    if jax.process_count() == 1:
      raise _stopped(e, ckpt, run_dir) from None
    return e
  return None


def _close(ckpt: checkpoint.Checkpointer, guard: preemption.PreemptionGuard,
           failure: fs.StorageError | None, run_dir: str) -> None:
  """Waits for the last save (raising if it failed); then every process learns whether any
  could not write the run directory, and all stop with an error if one could not."""
  ckpt.close()
  guard.requested(failed=failure is not None)
  if guard.failed_anywhere:
    raise _stopped(failure, ckpt, run_dir)


def _stopped(error: fs.StorageError | None, ckpt: checkpoint.Checkpointer,
             run_dir: str) -> fs.StorageError:
  """The one line a run stops with when it cannot write its run directory."""
  what = (str(error).rstrip(".") if error is not None else
          "another process could not write the run directory (its output says why)")
  return fs.StorageError(f"Stopped: {what}; {ckpt.last_complete()}. Run the same command "
                         f"again once {run_dir} is writable: it resumes from there.")


def _check_prompt_rows(cfg: model_config.T5Config, data: pipeline.InputSpec) -> None:
  """A prompt is prepended to each row: packed rows would share one prompt."""
  if cfg.prompt_length and data.pack:
    raise ValueError(
        f"Prompt tuning (prompt_length={cfg.prompt_length}) prepends the prompt to each row, "
        "so rows must hold one example each; set InputSpec.pack = False.")
  if cfg.prompt_length > data.inputs_length:
    raise ValueError(
        f"prompt_length={cfg.prompt_length} is longer than inputs_length="
        f"{data.inputs_length}; use a prompt of at most the inputs' length (Lester et al. "
        "use 1-150 vectors) or raise InputSpec.inputs_length.")


def _evaluate(config: run_config.TrainConfig, model, params, vocabulary, mesh,
              step: int, primary: bool) -> evaluate.Evaluation:
  """Runs the evaluation of `config.eval` on the current parameters, on the training mesh
  (each process decodes its share of every batch)."""
  from t5jax.decode.predictor import Predictor
  predictor = Predictor(model.config.replace(dropout_rate=0.0), params, vocabulary, mesh)
  name = config.eval.mixture_or_task or config.data.mixture_or_task
  evaluation = evaluate.evaluate(predictor, config.eval, name, config.loss.task_weights)
  metrics.print_line(f"eval at step {step}:\n{evaluate.format_table(evaluation.results)}",
                     primary)
  return evaluation


def _num_params(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def _check_finite(window: list[dict], first_step: int, ckpt: checkpoint.Checkpointer) -> None:
  """Fail fast: a NaN or Inf loss stops the run, naming the step. It runs before
  every save, so only finite states are ever saved."""
  for i, m in enumerate(window):
    if not np.isfinite(m["loss"]):
      ckpt.close()
      kept = ckpt.steps()
      raise FloatingPointError(
          f"Loss is {m['loss']} at step {first_step + i}; the last good checkpoint is step "
          f"{kept[-1] if kept else 'none'} in {ckpt.directory}. Lower the learning rate, check "
          "the data, or use float32 activations.")


def _sample_predictions(run_dir: str, model, params, config: run_config.TrainConfig,
                        voc) -> None:
  """Decodes a few validation examples (TrainConfig.sample_decoding) and writes them to
  predictions.jsonl."""
  from t5jax.decode.predictor import text_of
  spec = dataclasses.replace(config.data, split="validation", pack=False, shuffle=False)
  n = config.num_sample_predictions
  batch = next(pipeline.make_batches(spec, n, repeat=False))
  params = jax.device_get(params)
  task_names = pipeline.task_names(config.data.mixture_or_task)
  slot_table = train_step.task_slot_table(model, task_names)
  slots_b = None if slot_table is None else slot_table[batch["decoder_task_ids"][:, 0]]
  out = decoding.generate(model, params, batch["encoder_input_tokens"],
                          max_decode_length=config.max_decode_length,
                          strategy=config.sample_decoding, task_slots_b=slots_b)
  tokens, scores = out.tokens_bl, out.logprob_b
  lines = []
  for i in range(n):
    record = {
        "task": task_names[int(batch["decoder_task_ids"][i, 0])],
        "inputs": text_of(voc, batch["encoder_input_tokens"][i]),
        "targets": text_of(voc, batch["decoder_target_tokens"][i]),
        "prediction": text_of(voc, np.asarray(tokens[i])),
        "log_likelihood": float(scores[i]),
    }
    lines.append(json.dumps(record, ensure_ascii=False) + "\n")
    print(f"[{record['task']}] {record['inputs']}\n  target:     {record['targets']}\n"
          f"  prediction: {record['prediction']}", flush=True)
  fs.write_text(fs.join(run_dir, "predictions.jsonl"), "".join(lines))
