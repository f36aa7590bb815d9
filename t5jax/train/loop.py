"""The training loop: one linear function from configuration to a trained model."""

from __future__ import annotations

import dataclasses
import json
import time

import gin
import jax
import numpy as np

from t5jax import checkpoint, fs
from t5jax.decode import decoding, evaluate
from t5jax.train import early_stopping, losses, metrics, optim, preemption, run_vocabulary
from t5jax.train import step as train_step, task_weighting
from t5jax.model import trainable
from t5jax.parallel import partitioning
from t5jax import config as gin_config
from t5jax.data import class_labels, pipeline, vocab
from t5jax.model import config as model_config
from t5jax.model import peft, settings, t5, task_params

InputSpec = gin.external_configurable(pipeline.InputSpec, name="InputSpec")
MeshConfig = gin.external_configurable(partitioning.MeshConfig, name="MeshConfig")
ModelSettings = gin.external_configurable(settings.ModelSettings, name="ModelSettings")


PROMPT_INITS = ("vocab", "labels")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class PeftConfig:
  """Parameter-efficient fine-tuning (model/peft.py), set apart from the model settings so
  that a recipe (runs/lora.gin, runs/prompt_tuning.gin) goes on top of any run. Fields
  left at their defaults leave the model's T5Config (ModelSettings included) as is.

  Attributes:
    lora_rank: LoRA rank r (0: no LoRA). PEFT's default for T5: 8.
    lora_alpha: LoRA scale numerator; the branch is scaled by alpha / r.
    lora_dropout: dropout on the LoRA branch's input.
    lora_targets: projections to adapt, by PEFT's names: q, k, v, o, wi (wi_0, wi_1), wo.
    prompt_length: prompt tuning's number of prompt vectors (0: none).
    prompt_init: "vocab" (embeddings of common tokens) or "labels" (first the mean
      embedding of each of the task's class labels, read from its training targets,
      then common tokens), as Lester et al.
    per_task: a LoRA and prompt per task slot (T5Config.peft_per_task).
  """
  lora_rank: int = 0
  lora_alpha: float = 32.0
  lora_dropout: float = 0.0
  lora_targets: tuple = ("q", "v")
  prompt_length: int = 0
  prompt_init: str = "vocab"
  per_task: bool = False

  def __post_init__(self):
    if self.prompt_init not in PROMPT_INITS:
      raise ValueError(f"PeftConfig.prompt_init={self.prompt_init!r} is not one of "
                       f"{PROMPT_INITS}.")

  def overrides(self) -> dict:
    """The T5Config fields this sets (those not at their defaults)."""
    names = {"per_task": "peft_per_task"}
    out = {}
    for field in dataclasses.fields(self):
      if field.name == "prompt_init":  # how to start, not the model
        continue
      value = getattr(self, field.name)
      if isinstance(value, list):
        value = tuple(value)
      if value != field.default:
        out[names.get(field.name, field.name)] = value
    return out


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """A training run.

  Attributes:
    model: a size from t5jax.model.config.SIZES, e.g. "t5_1_1_base".
    model_settings: the T5Config fields to change, one binding each
      (`ModelSettings.dtype = 'float32'`), so that a later gin file or flag changes one.
    model_overrides: T5Config fields to change as one dict bound whole, e.g.
      {"dtype": "float32"} (a later binding replaces all of it); applied after
      model_settings. ModelSettings says the same field by field.
    peft: LoRA and prompt tuning (applied over model_settings and model_overrides).
    data: what to read (task or mixture, lengths, packing, seed).
    batch_size: global batch size in sequences (packed rows).
    num_steps: optimizer steps.
    microbatches: gradient accumulation: the batch runs as this many slices.
    unroll_microbatches: the microbatches as straight-line code, not a loop: XLA may
      overlap one microbatch with the next, and its cost analysis counts every one
      (`t5jax compile --fit` prices a microbatched step so); the program grows m-fold.
    mesh: device mesh shape.
    optimizer: optimiser and learning-rate schedule.
    loss: z-loss, label smoothing, normalisation, per-task weights (fixed or dynamic).
    checkpoint: saving, keeping, resuming and fine-tuning.
    eval: periodic evaluation (SeqIO metrics per task) during training.
    seed: parameter initialisation and dropout.
    log_every: steps between metric lines.
    num_sample_predictions: validation examples decoded at the end (predictions.jsonl).
    max_decode_length: decode length for those predictions.
    sample_decoding: how they are decoded (greedy unless bound, e.g. the demo's
      `TrainConfig.sample_decoding = @samples/DecodeConfig()` with beam search).
  """
  model: str = "t5_1_0_tiny"
  model_settings: settings.ModelSettings = dataclasses.field(default_factory=ModelSettings)
  model_overrides: dict = dataclasses.field(default_factory=dict)
  peft: PeftConfig = dataclasses.field(default_factory=PeftConfig)
  data: pipeline.InputSpec = dataclasses.field(default_factory=InputSpec)
  batch_size: int = 32
  num_steps: int = 300
  microbatches: int = 1
  unroll_microbatches: bool = False
  mesh: partitioning.MeshConfig = dataclasses.field(default_factory=MeshConfig)
  optimizer: optim.OptimizerConfig = dataclasses.field(default_factory=optim.OptimizerConfig)
  loss: losses.LossConfig = dataclasses.field(default_factory=losses.LossConfig)
  checkpoint: checkpoint.CheckpointConfig = dataclasses.field(
      default_factory=checkpoint.CheckpointConfig)
  eval: evaluate.EvalConfig = dataclasses.field(default_factory=evaluate.EvalConfig)
  seed: int = 0
  log_every: int = 10
  num_sample_predictions: int = 4
  max_decode_length: int = 64
  sample_decoding: decoding.DecodeConfig = dataclasses.field(
      default_factory=evaluate.DecodeConfig)

  def __post_init__(self):
    for field in ("batch_size", "num_steps", "microbatches", "log_every"):
      if getattr(self, field) <= 0:
        raise ValueError(f"TrainConfig.{field} must be positive, got {getattr(self, field)}.")

  def model_config(self) -> model_config.T5Config:
    """The model's T5Config: the size, then model_settings, then model_overrides, then the
    PEFT settings (made once from all of them: a change may need another's, e.g.
    task_specific needs task_slots)."""
    overrides = settings.from_dict(self.model_overrides)
    return model_config.get_config(self.model, **{**self.model_settings.changes(),
                                                  **overrides.changes(),
                                                  **self.peft.overrides()})


def build_model(config: TrainConfig, vocabulary=None) -> t5.Transformer:
  """The model; with the run's `vocabulary`, checked to have a row for each of its ids."""
  cfg = config.model_config()
  if vocabulary is not None:
    run_vocabulary.check_model(vocabulary, cfg.vocab_size, config.model)
  return t5.Transformer(cfg)


def optimizer_config(config: TrainConfig, model: t5.Transformer) -> optim.OptimizerConfig:
  """The run's optimizer settings, with the parameters that train resolved
  (a LoRA or prompt model trains only those unless OptimizerConfig.trainable says)."""
  pattern = trainable.effective_pattern(config.optimizer.trainable, model.config)
  return dataclasses.replace(config.optimizer, trainable=pattern)


def train(run_dir: str, config: TrainConfig | None = None) -> list[dict]:
  """Trains (resuming from RUN_DIR/checkpoints if there are any) on the vocabulary of its
  tasks (or InputSpec.vocabulary's), which the run directory records; returns the logged
  metric summaries."""
  config = config or TrainConfig()
  with run_vocabulary.for_run(config.data, config.eval.mixture_or_task,
                              config.checkpoint.init_from) as vocabulary:
    return _train(run_dir, config, vocabulary)


def _train(run_dir: str, config: TrainConfig, vocabulary) -> list[dict]:
  primary = jax.process_index() == 0
  mesh = partitioning.make_mesh(config.mesh)
  partitioning.check_batch_size(config.batch_size, mesh, config.microbatches)
  task_names = pipeline.task_names(config.data.mixture_or_task)
  model = build_model(config, vocabulary)
  _check_prompt_rows(model.config, config.data)
  opt_cfg = optimizer_config(config, model)
  tx = optim.make_optimizer(opt_cfg)
  ckpt = checkpoint.Checkpointer(fs.join(run_dir, "checkpoints"), config.checkpoint)

  with partitioning.sharding_context(mesh):
    state, shardings, data_local = _initial_state(config, model, tx, mesh, ckpt,
                                                  len(task_names), vocabulary)
    step_fn = train_step.jit_train_step(
        mesh, shardings, model=model, tx=tx, loss_cfg=config.loss,
        task_weights_k=config.loss.weights_vector(task_names),
        slot_of_task_k=train_step.task_slot_table(model, task_names),
        microbatches=config.microbatches, unroll_microbatches=config.unroll_microbatches,
        schedule=optim.learning_rate_schedule(config.optimizer),
        trainable_pattern=opt_cfg.trainable)

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

  meta = _checkpoint_meta(config, model, len(task_names),
                          vocab.record(vocabulary, run_dir if primary else None))
  if _saves_trained_only(model.config, config.checkpoint, opt_cfg.trainable):
    # A resumed run keeps the base its checkpoints name (pinned to a step).
    saved = ckpt.read_meta(ckpt.steps()[-1]).get("peft") if ckpt.steps() else None
    meta["peft"] = saved or checkpoint.peft_meta(config.checkpoint.init_from, opt_cfg.trainable)
  patience = None
  if config.checkpoint.best_metric:
    if config.checkpoint.patience and not config.eval.every_steps:
      raise ValueError(f"CheckpointConfig.patience={config.checkpoint.patience} counts "
                       "evaluations, but EvalConfig.every_steps is 0: set it.")
    saved = ckpt.read_meta(start).get("early_stopping") if start in ckpt.steps() else None
    patience = early_stopping.Patience.resume(
        config.checkpoint.best_metric, config.checkpoint.best_mode,
        config.checkpoint.patience, saved)
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
                  data_position=_global_position(batches.state(), config, mesh))
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


def _saves_trained_only(cfg, ckpt_cfg: checkpoint.CheckpointConfig, pattern: str) -> bool:
  """A LoRA or prompt run from a base checkpoint saves only what it trains (a few MB)
  plus a reference to the base: everything frozen is the base's, unchanged."""
  return bool(cfg.peft and ckpt_cfg.init_from and pattern == peft.trainable_pattern(cfg)
              and not (cfg.task_specific or cfg.adapter_dim))


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


def _global_position(local: np.ndarray, config: TrainConfig, mesh) -> jax.Array:
  """This process's rows' data position as part of the global [batch, 1 + tasks] array
  (int32: the counts stay far below 2^31), sharded over the batch axes like a batch."""
  shape = pipeline.state_shape(config.data, config.batch_size)
  return jax.make_array_from_process_local_data(
      partitioning.batch_sharding(mesh), local.astype(np.int32), shape)


def _local_position(position: jax.Array, config: TrainConfig) -> np.ndarray:
  """This process's rows of a restored global data position (any process count)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    position = multihost_utils.process_allgather(position, tiled=True)
  local = config.batch_size // jax.process_count()
  start = jax.process_index() * local
  return np.asarray(position, np.int64)[start:start + local]


def _initial_state(config: TrainConfig, model, tx, mesh, ckpt: checkpoint.Checkpointer,
                   num_tasks: int, vocabulary):
  """Resumes from the run's own latest good checkpoint, else starts fresh
  (from `checkpoint.init_from`'s parameters when fine-tuning).

  Returns (state, shardings, this process's data position or None for the beginning)."""
  lengths = (config.data.inputs_length, config.data.targets_length)
  task_state = task_weighting.init_state(config.loss, num_tasks)
  shardings = train_step.state_shardings(model, tx, mesh, *lengths, task_state)
  abstract = train_step.abstract_train_state(model, tx, *lengths, task_state)
  same_data = _check_resumable(ckpt, model.config, config, num_tasks, vocabulary)
  position = jax.ShapeDtypeStruct(pipeline.state_shape(config.data, config.batch_size),
                                  np.int32, sharding=partitioning.batch_sharding(mesh))
  restored = ckpt.restore_latest(abstract, shardings, position if same_data else None)
  if restored is not None:
    state, meta, data_position = restored
    _check_same_architecture(meta, model.config, ckpt.directory)
    print(f"Resumed from step {int(state.step)} in {ckpt.directory}", flush=True)
    local = None if data_position is None else _local_position(data_position, config)
    return state, shardings, local
  state, shardings = train_step.create_train_state(model, tx, mesh, config.seed, *lengths,
                                                   task_state)
  if config.checkpoint.init_from:
    source = config.checkpoint.init_from
    source_meta = checkpoint.read_meta(source)
    run_vocabulary.check_same(vocabulary, source_meta, source,
                              allow=config.checkpoint.vocabulary_change)
    source_cfg = source_meta.get("model_config", {})
    adds = model.config.has_task_parameters or model.config.peft
    plain_source = adds and not any(source_cfg.get(f) for f in ADDED_PARAMETER_FIELDS)
    _check_same_architecture(source_meta, model.config, source,
                             task_fields=not plain_source)
    if plain_source:
      # A plain T5 checkpoint: its weights become the shared modules, the task
      # copies start from them, the adapters as the identity, LoRA as zero.
      shared = checkpoint.load_params(
          source, task_params.shared_only(abstract.params),
          task_params.shared_only(shardings.params))
      params = task_params.with_shared(state.params, shared)
      params = _init_prompts(params, model.config, config)
    else:
      params = checkpoint.load_params(source, abstract.params, shardings.params)
    state = state.replace(params=params)
    print(f"Fine-tuning from the parameters in {source}", flush=True)
  elif model.config.prompt_length:
    state = state.replace(params=_init_prompts(state.params, model.config, config))
  return state, shardings, None


def _init_prompts(params, cfg, config: TrainConfig):
  """Prompts drawn from the (loaded) embeddings (peft.init_prompts), with the tasks'
  class labels first under PeftConfig.prompt_init="labels", kept on the prompts'
  shardings."""
  if not cfg.prompt_length:
    return params
  labels = None
  if config.peft.prompt_init == "labels":
    tasks = pipeline.task_names(config.data.mixture_or_task)
    keys = peft.prompt_keys(cfg)
    labels = {key: [] for key in keys}
    for task in tasks:
      key = keys[cfg.slot_of_task(task)] if cfg.peft_per_task else keys[0]
      seen = {tuple(x) for x in labels[key]}
      labels[key] += [x for x in class_labels.class_labels(task) if tuple(x) not in seen]
  new = peft.init_prompts(params, cfg, config.seed, labels)
  return {k: v if v is params[k] else jax.device_put(v, params[k].sharding)
          for k, v in new.items()}


ARCHITECTURE_FIELDS = ("vocab_size", "d_model", "d_kv", "d_ff", "num_heads",
                       "num_encoder_layers", "num_decoder_layers", "feed_forward",
                       "tie_word_embeddings", "relative_attention_num_buckets")
# The fields that give a model parameters a plain T5 lacks.
ADDED_PARAMETER_FIELDS = ("task_specific", "adapter_dim", "lora_rank", "prompt_length",
                          "peft_per_task")
TASK_FIELDS = ("task_slots", "task_specific", "adapter_dim", "lora_rank", "lora_targets",
               "prompt_length", "peft_per_task")


def _check_same_architecture(meta: dict, cfg, source: str, task_fields: bool = True) -> None:
  saved = meta.get("model_config", {})
  for field in ARCHITECTURE_FIELDS + (TASK_FIELDS if task_fields else ()):
    default = getattr(model_config.T5Config, field, None) if field in TASK_FIELDS else None
    value = saved.get(field, default)
    if isinstance(value, list):
      value = tuple(value)
    if value is not None and value != getattr(cfg, field):
      raise ValueError(
          f"Checkpoint {source} has {field}={value!r} but the configured model has "
          f"{getattr(cfg, field)!r}; configure the same model (or start a new --run_dir with "
          "CheckpointConfig.init_from to keep a plain T5's parameters).")


def _check_resumable(ckpt: checkpoint.Checkpointer, cfg, config: TrainConfig,
                     num_tasks: int, vocabulary) -> bool:
  """A run resumed with another architecture (task parameters included) or another
  task weighting has another state, which would not restore: say so before trying,
  rather than setting its checkpoints aside as unreadable.

  Returns whether the checkpoint's data position applies (same data settings); with other
  settings, refuses in one line unless `CheckpointConfig.data_restart` is set."""
  steps = ckpt.steps()
  if not steps:
    return True
  try:
    meta = ckpt.read_meta(steps[-1])
  except Exception:  # noqa: BLE001 - an unreadable checkpoint is restore_latest's to handle
    return True
  _check_same_architecture(meta, cfg, ckpt.directory)
  run_vocabulary.check_same(vocabulary, meta, ckpt.directory, allow=False)
  weighting = config.loss.task_weighting
  saved = meta.get("task_weighting", {"mode": "fixed"})  # from before task weighting
  if saved["mode"] != weighting or (weighting != "fixed" and saved["num_tasks"] != num_tasks):
    raise ValueError(
        f"Checkpoint step {steps[-1]} in {ckpt.directory} was trained with task_weighting="
        f"{saved['mode']!r} over {saved.get('num_tasks', '?')} tasks, but this run has "
        f"{weighting!r} over {num_tasks}; resume with the same LossConfig.task_weighting and "
        "mixture, or start a new --run_dir (with CheckpointConfig.init_from to keep the "
        "parameters).")
  signature = pipeline.signature(config.data, config.batch_size)
  data = meta.get("data", {})
  changed = [f"{k} {data.get(k)!r} -> {v!r}" for k, v in signature.items() if data.get(k) != v]
  if not changed:
    return True
  if data.get("pipeline") != signature["pipeline"]:
    changed = [f"it was written by input pipeline version {data.get('pipeline', 1)}, this is "
               f"version {signature['pipeline']}"]
  if config.checkpoint.data_restart:
    print(f"Data settings changed since step {steps[-1]} ({'; '.join(changed)}); "
          "CheckpointConfig.data_restart=True: the new data stream starts from its beginning.",
          flush=True)
    return False
  raise ValueError(
      f"Checkpoint step {steps[-1]} in {ckpt.directory} was trained on other data settings "
      f"({'; '.join(changed)}); resume with the same data settings, or add "
      "--gin.CheckpointConfig.data_restart=True to keep the model and start this data stream "
      "from its beginning.")


def _checkpoint_meta(config: TrainConfig, model, num_tasks: int, vocab_record: dict) -> dict:
  return {
      "model_config": dataclasses.asdict(model.config),
      "model": config.model,
      "vocab": vocab_record,
      "data": pipeline.signature(config.data, config.batch_size),
      "task_weighting": {"mode": config.loss.task_weighting, "num_tasks": num_tasks},
      "gin": gin.config_str(),
      "num_steps": config.num_steps,
  }


def _evaluate(config: TrainConfig, model, params, vocabulary, mesh,
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


def _sample_predictions(run_dir: str, model, params, config: TrainConfig, voc) -> None:
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
