"""Where a run starts: its own latest good checkpoint (resume), else fresh parameters or
CheckpointConfig.init_from's (warm start: fine-tuning, a plain T5 under task parameters,
adapters, LoRA or prompts), after the checks that make a resume safe (same architecture,
vocabulary, task weighting and data settings). Also what its checkpoints record beside the
arrays, and each process's share of the saved data position."""

from __future__ import annotations

import dataclasses

import gin
import jax
import numpy as np

from t5jax import checkpoint
from t5jax.train import early_stopping, run_config, run_vocabulary, step as train_step
from t5jax.train import step_builder
from t5jax.parallel import partitioning
from t5jax.data import class_labels, pipeline
from t5jax.model import config as model_config
from t5jax.model import peft, task_params


def initial_state(setup: step_builder.TrainSetup, ckpt: checkpoint.Checkpointer,
                  vocabulary) -> tuple[train_step.TrainState, np.ndarray | None]:
  """Resumes from the run's own latest good checkpoint, else starts fresh
  (from `checkpoint.init_from`'s parameters when fine-tuning).

  Returns (state, this process's data position or None for the beginning)."""
  config, model, mesh = setup.config, setup.model, setup.mesh
  abstract, shardings = setup.abstract, setup.shardings
  num_tasks = len(setup.task_names)
  same_data = _check_resumable(ckpt, model.config, config, num_tasks, vocabulary)
  position = jax.ShapeDtypeStruct(pipeline.state_shape(config.data, config.batch_size),
                                  np.int32, sharding=partitioning.batch_sharding(mesh))
  restored = ckpt.restore_latest(abstract, shardings, position if same_data else None)
  if restored is not None:
    state, meta, data_position = restored
    _check_same_architecture(meta, model.config, ckpt.directory)
    print(f"Resumed from step {int(state.step)} in {ckpt.directory}", flush=True)
    local = None if data_position is None else _local_position(data_position, config)
    return state, local
  state = setup.create_state()
  if config.checkpoint.init_from:
    return _fine_tuning_start(state, setup, vocabulary), None
  if model.config.prompt_length:
    state = state.replace(params=_init_prompts(state.params, model.config, config))
  return state, None


def _fine_tuning_start(state, setup: step_builder.TrainSetup, vocabulary):
  """`state` with CheckpointConfig.init_from's parameters: all of them, or a plain T5's
  as the shared modules of a model that adds task parameters, adapters, LoRA or prompts."""
  config, model = setup.config, setup.model
  source = config.checkpoint.init_from
  source_meta = checkpoint.read_meta(source)
  run_vocabulary.check_same(vocabulary, source_meta, source,
                            allow=config.checkpoint.vocabulary_change)
  source_cfg = source_meta.get("model_config", {})
  adds = model.config.has_task_parameters or model.config.peft
  plain_source = adds and not any(source_cfg.get(f) for f in ADDED_PARAMETER_FIELDS)
  _check_same_architecture(source_meta, model.config, source, task_fields=not plain_source)
  if plain_source:
    # A plain T5 checkpoint: its weights become the shared modules, the task
    # copies start from them, the adapters as the identity, LoRA as zero.
    shared = checkpoint.load_params(
        source, task_params.shared_only(setup.abstract.params),
        task_params.shared_only(setup.shardings.params))
    params = task_params.with_shared(state.params, shared)
    params = _init_prompts(params, model.config, config)
  else:
    params = checkpoint.load_params(source, setup.abstract.params, setup.shardings.params)
  print(f"Fine-tuning from the parameters in {source}", flush=True)
  return state.replace(params=params)


def _init_prompts(params, cfg, config: run_config.TrainConfig):
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


def _check_resumable(ckpt: checkpoint.Checkpointer, cfg, config: run_config.TrainConfig,
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


def checkpoint_meta(setup: step_builder.TrainSetup, ckpt: checkpoint.Checkpointer,
                    vocab_record: dict) -> dict:
  """What every checkpoint of the run records beside its arrays: the model, vocabulary,
  data and task weighting it resumes only with, the gin config, and for a run that saves
  only what it trains the base checkpoint holding the rest."""
  config, model = setup.config, setup.model
  meta = {
      "model_config": dataclasses.asdict(model.config),
      "model": config.model,
      "vocab": vocab_record,
      "data": pipeline.signature(config.data, config.batch_size),
      "task_weighting": {"mode": config.loss.task_weighting,
                         "num_tasks": len(setup.task_names)},
      "gin": gin.config_str(),
      "num_steps": config.num_steps,
  }
  if _saves_trained_only(model.config, config.checkpoint, setup.optimizer.trainable):
    # A resumed run keeps the base its checkpoints name (pinned to a step).
    saved = ckpt.read_meta(ckpt.steps()[-1]).get("peft") if ckpt.steps() else None
    meta["peft"] = saved or checkpoint.peft_meta(config.checkpoint.init_from,
                                                 setup.optimizer.trainable)
  return meta


def patience(config: run_config.TrainConfig, ckpt: checkpoint.Checkpointer,
             start: int) -> early_stopping.Patience | None:
  """Early stopping on CheckpointConfig.best_metric (None: off), resumed from the state the
  checkpoint at `start` saved."""
  if not config.checkpoint.best_metric:
    return None
  if config.checkpoint.patience and not config.eval.every_steps:
    raise ValueError(f"CheckpointConfig.patience={config.checkpoint.patience} counts "
                     "evaluations, but EvalConfig.every_steps is 0: set it.")
  saved = ckpt.read_meta(start).get("early_stopping") if start in ckpt.steps() else None
  return early_stopping.Patience.resume(config.checkpoint.best_metric,
                                        config.checkpoint.best_mode,
                                        config.checkpoint.patience, saved)


def _saves_trained_only(cfg, ckpt_cfg: checkpoint.CheckpointConfig, pattern: str) -> bool:
  """A LoRA or prompt run from a base checkpoint saves only what it trains (a few MB)
  plus a reference to the base: everything frozen is the base's, unchanged."""
  return bool(cfg.peft and ckpt_cfg.init_from and pattern == peft.trainable_pattern(cfg)
              and not (cfg.task_specific or cfg.adapter_dim))


def global_position(local: np.ndarray, config: run_config.TrainConfig, mesh) -> jax.Array:
  """This process's rows' data position as part of the global [batch, 1 + tasks] array
  (int32: the counts stay far below 2^31), sharded over the batch axes like a batch."""
  shape = pipeline.state_shape(config.data, config.batch_size)
  return jax.make_array_from_process_local_data(
      partitioning.batch_sharding(mesh), local.astype(np.int32), shape)


def _local_position(position: jax.Array, config: run_config.TrainConfig) -> np.ndarray:
  """This process's rows of a restored global data position (any process count)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    position = multihost_utils.process_allgather(position, tiled=True)
  local = config.batch_size // jax.process_count()
  start = jax.process_index() * local
  return np.asarray(position, np.int64)[start:start + local]
