"""The search's analytic cost model: the settings that trade memory for time (`Setting`),
those valid for a slice (`candidates`), and each one's step time (`estimate_seconds`) and
peak memory per chip (`estimate_bytes`) for the run's own model (TrainConfig.model_config)."""

from __future__ import annotations

import dataclasses

from t5jax.model import config as model_config
from t5jax.model.flops import model_flops_per_step
from t5jax.parallel import topology

# Step time relative to no remat (forward x 3): "full" recomputes the forward (x 4/3);
# "minimal" keeps the matmul outputs and recomputes only elementwise work and the scores.
REMAT_TIME = {"none": 1.0, "minimal": 1.04, "full": 4.0 / 3.0}
SCAN_TIME = 1.02         # a loop over layers: no fusion across layer boundaries
QUERY_BLOCK_TIME = 1.03  # each query block's scores computed again in the backward
QUERY_BLOCK = 128
COLLECTIVES_HIDDEN = 0.5  # share of the collectives' time assumed overlapped with compute
# Fixed costs that make small slices of work slow: a layer's pass (kernel launches, a loop
# step) and a collective's latency, per microbatch.
LAYER_PASS_S = 20e-6
COLLECTIVE_LATENCY_S = 10e-6


@dataclasses.dataclass(frozen=True)
class Setting:
  """One point of the search: what `apply` changes in a TrainConfig."""
  remat_policy: str = "none"
  scan_layers: bool = False
  attention_query_block: int = 0
  microbatches: int = 1
  tensor: int = 1
  replicated: bool = False  # pure data parallelism: every chip holds the whole state

  @property
  def label(self) -> str:
    parts = [f"remat={self.remat_policy}", "scan" if self.scan_layers else "unrolled"]
    if self.attention_query_block:
      parts.append(f"qblock={self.attention_query_block}")
    parts.append(f"micro={self.microbatches}")
    parts.append("data-parallel" if self.replicated else f"fsdp tensor={self.tensor}")
    return " ".join(parts)

  def model_changes(self) -> dict:
    """The ModelSettings fields the setting sets."""
    return {"remat_policy": self.remat_policy, "scan_layers": self.scan_layers,
            "attention_query_block": self.attention_query_block}

  def mesh(self, config) -> dict:
    if self.replicated:
      return {"data": -1, "fsdp": 1, "tensor": 1}
    return {"data": max(config.mesh.data, 1), "fsdp": -1, "tensor": self.tensor}

  def apply(self, config):
    mesh = dataclasses.replace(config.mesh, **self.mesh(config))
    changes = self.model_changes()
    # model_overrides, applied after the settings, must not undo the setting's choices.
    overrides = {k: v for k, v in config.model_overrides.items() if k not in changes}
    return dataclasses.replace(
        config, model_settings=dataclasses.replace(config.model_settings, **changes),
        model_overrides=overrides, microbatches=self.microbatches, mesh=mesh)

  def bindings(self, config) -> list[str]:
    """The setting as gin bindings (`Configurable.field = value`)."""
    return [f"ModelSettings.{name} = {value!r}" for name, value in self.model_changes().items()
           ] + [f"TrainConfig.microbatches = {self.microbatches}"] + [
                f"MeshConfig.{axis} = {size}" for axis, size in self.mesh(config).items()]

  def gin_bindings(self, config) -> list[str]:
    """The bindings as command-line flags a user pastes."""
    flags = []
    for binding in self.bindings(config):
      name, value = binding.split(" = ", 1)
      quote = " " in value or "'" in value  # the shell keeps a string's quotes for gin
      flags.append(f'--gin.{name}="{value}"' if quote else f"--gin.{name}={value}")
    return flags


def candidates(config, chips: int) -> list[Setting]:
  """Every setting the search may try for `config` on `chips` chips (all valid shapes)."""
  cfg = config.model_config()
  data = max(config.mesh.data, 1)
  blocks = [0] + ([QUERY_BLOCK] if config.data.inputs_length > QUERY_BLOCK else [])
  splits = [(1, True)] + [(t, False) for t in (1, 2, 4, 8)]
  out = []
  for tensor, replicated in splits:
    if chips % (data * tensor) or cfg.num_heads % tensor or cfg.d_ff % tensor:
      continue
    shards = chips // tensor  # data x fsdp devices split the batch
    for micro in (1, 2, 4, 8, 16):
      if config.batch_size % micro or (config.batch_size // micro) % shards:
        continue
      for remat in model_config.REMAT_POLICIES:
        for scan in (False, True):
          for block in blocks:
            out.append(Setting(remat, scan, block, micro, tensor, replicated))
  return out


@dataclasses.dataclass(frozen=True)
class Counts:
  """A run's parameters: all of them, and those it trains."""
  total: float
  trained: float


def parameter_counts(config) -> Counts:
  """All parameters and the trained ones: a PEFT run (LoRA, prompts; its base frozen) or
  an `OptimizerConfig.trainable` pattern trains only the parameters it matches, which alone
  get optimizer state, gradients and their reduction."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from t5jax.model import param_tree, trainable  # pylint: disable=g-import-not-at-top
  from t5jax.train import step_builder  # pylint: disable=g-import-not-at-top
  model = step_builder.build_model(config)
  pattern = step_builder.optimizer_config(config, model).trainable
  shapes = param_tree.abstract_params(model)  # traced, not allocated: every norm and bias
  sizes = jax.tree.leaves(jax.tree.map(lambda x: int(np.prod(x.shape)), shapes))
  if not pattern:
    return Counts(sum(sizes), sum(sizes))
  trains = jax.tree.leaves(trainable.mask(shapes, pattern))
  return Counts(sum(sizes), sum(n for n, t in zip(sizes, trains) if t))


def _state_bytes(config, counts: Counts) -> float:
  # fp32 parameters; for the trained ones, optimizer state (Adafactor's factored moments are
  # near nothing; Adam's are two fp32 copies) + the fp32 gradient while it is applied.
  optimizer = 8.0 if config.optimizer.name.startswith("adam") else 0.1
  return 4.0 * counts.total + (optimizer + 4.0) * counts.trained


def estimate_bytes(config, setting: Setting, chips: int,
                   counts: Counts | None = None) -> tuple[float, float]:
  """(state bytes, activation bytes) per chip, analytic: what each layer keeps for the
  backward in bf16 under the remat policy, for one microbatch's share of the batch.

  Args:
    counts: `parameter_counts(config)`, when the caller has it.
  """
  counts = counts or parameter_counts(config)
  cfg = setting.apply(config).model_config()
  t = setting.tensor
  rows = config.batch_size / setting.microbatches / (chips / t)
  li, lt = config.data.inputs_length, config.data.targets_length
  d, f, h = cfg.d_model, cfg.d_ff * (2 if cfg.gated_mlp else 1), cfg.num_heads
  nh = h * cfg.d_kv
  q_enc = setting.attention_query_block or li
  q_dec = min(setting.attention_query_block or lt, lt)

  def layer(tokens, width_d, width_sharded, scores, scores_blocked):
    keep = {"none": tokens * (width_d * d + width_sharded / t) * 2 + scores * 6,
            "minimal": tokens * ((width_d - 3) * d + width_sharded / t) * 2 + scores * 4,
            "full": tokens * d * 4}[cfg.remat_policy]
    if setting.attention_query_block and cfg.remat_policy != "full":
      keep -= (scores - scores_blocked) * (6 if cfg.remat_policy == "none" else 4)
    return keep

  enc_scores = rows * h / t * li * li
  dec_scores = rows * h / t * (lt * lt + lt * li)
  enc = layer(rows * li, 6, 3 * nh + 2 * f, enc_scores, enc_scores * q_enc / li)
  dec = layer(rows * lt, 9, 6 * nh + 2 * f, dec_scores, dec_scores * q_dec / lt)
  kept = cfg.num_encoder_layers * enc + cfg.num_decoder_layers * dec
  if cfg.remat_policy == "full":  # one layer's activations live while it is recomputed
    kept += max(rows * li * (6 * d + (3 * nh + 2 * f) / t) * 2 + enc_scores * 6,
                rows * lt * (9 * d + (6 * nh + 2 * f) / t) * 2 + dec_scores * 6)
  state = _state_bytes(config, counts)
  return state / (1 if setting.replicated else chips), kept


def estimate_seconds(config, setting: Setting, chip: topology.Chip, chips: int,
                     counts: Counts | None = None) -> float:
  """Step time at the chip's bf16 peak, the remat's recomputation and the collectives: the
  FSDP gathers and gradient scatters (once per microbatch), tensor parallelism's
  activation all-reduces (per layer). A frozen parameter costs no weight gradient: the
  backward of a run that trains a fraction p of them is (1 + p) forwards, not 2."""
  counts = counts or parameter_counts(config)
  cfg = setting.apply(config).model_config()
  li, lt = config.data.inputs_length, config.data.targets_length
  flops = model_flops_per_step(cfg, config.batch_size, li, lt)["total"] / chips
  flops *= (2.0 + counts.trained / counts.total) / 3.0
  factor = REMAT_TIME[cfg.remat_policy] * (SCAN_TIME if cfg.scan_layers else 1.0)
  if setting.attention_query_block:
    factor *= QUERY_BLOCK_TIME
  compute = flops * factor / chip.bf16_flops
  fsdp = chips // setting.tensor
  params, trained = counts.total / setting.tensor, counts.trained / setting.tensor
  if setting.replicated:  # one all-reduce of the trained fp32 gradients a step
    gathers = trained * 4 * 2 * (chips - 1) / chips
  else:  # bf16 gathers forward and backward, an fp32 reduce-scatter, per microbatch
    gathers = setting.microbatches * (params * 2 * 2 + trained * 4) * (fsdp - 1) / fsdp
  tokens = config.batch_size * (li + lt) / fsdp
  t = setting.tensor
  reduces = (4 * (cfg.num_encoder_layers + cfg.num_decoder_layers) * tokens * cfg.d_model * 2
             * 2 * (t - 1) / t)
  layers = cfg.num_encoder_layers + cfg.num_decoder_layers
  passes = 3 * REMAT_TIME[cfg.remat_policy] * layers * setting.microbatches
  collectives = setting.microbatches * layers * (
      (0 if setting.replicated else 3) + (4 if t > 1 else 0))
  fixed = passes * LAYER_PASS_S + collectives * COLLECTIVE_LATENCY_S
  return compute + fixed + COLLECTIVES_HIDDEN * (gathers + reduces) / chip.ici_bandwidth
