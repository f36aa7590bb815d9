"""A training run's configuration, as gin binds it: `TrainConfig` (one run) and
`PeftConfig` (LoRA and prompts over any run), with the configurables of their fields
(`InputSpec`, `MeshConfig`, ...). `TrainConfig.model_config()` is this run's model."""

from __future__ import annotations

import dataclasses

import gin

from t5jax import checkpoint
from t5jax.decode import decoding, evaluate
from t5jax.train import losses, optim
from t5jax.parallel import partitioning
from t5jax.data import pipeline
from t5jax.model import config as model_config
from t5jax.model import settings

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
