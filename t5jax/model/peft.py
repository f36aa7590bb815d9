"""Parameter-efficient fine-tuning inside the model: LoRA branches and prompt vectors.

LoRA (Hu et al. 2021, as Hugging Face PEFT computes it): a projection W x of a target
(T5Config.lora_targets) becomes W x + (alpha / r) B A dropout(x), with A [in, r] drawn
as PEFT draws it (uniform in +-1/sqrt(in): kaiming_uniform with a = sqrt(5)) and B
[r, out] zero, so that step 0 computes exactly the base model. The branch's parameters
live beside the kernel they adapt, in a sub-module lora_{target} ({a, b}).

Prompt tuning (Lester et al. 2021): `prompt` [P, D] vectors prepended to the encoder's
embedded inputs; the encoder then sees P more positions (the masks and relative
position buckets included). Rows are not packed under prompt tuning (one prompt per
example), which the training loop checks.

With T5Config.peft_per_task each task slot k has its own lora_{target}_task{k} and
prompt_task{k}. A token's LoRA branch runs with its own slot's A and B: the tokens are
sorted by slot into blocks (slot_blocks.py), so the branch costs one copy's FLOPs plus
at most K padded blocks, however many slots there are.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t5jax.model import slot_blocks
from t5jax.model.config import T5Config

LORA_PREFIX = "lora_"
PROMPT = "prompt"
# Prompt rows are initialised from the embeddings of tokens drawn from this id range:
# SentencePiece orders pieces by frequency, so these are the ~5,000 most common
# (Lester et al. sample from the 5,000 most common tokens); ids 0-2 are pad, eos, unk.
PROMPT_VOCAB_IDS = (3, 5003)


def lora_name(target: str) -> str:
  return f"{LORA_PREFIX}{target}"


def _uniform(bound: float):
  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


class LoRA(nn.Module):
  """One LoRA branch's parameters: a [*in_shape, r] and b [r, *out_shape]."""
  config: T5Config
  in_shape: tuple[int, ...]
  in_axes: tuple[str, ...]
  out_shape: tuple[int, ...]
  out_axes: tuple[str, ...]

  @nn.compact
  def __call__(self):
    cfg = self.config
    r, pdt = cfg.lora_rank, jnp.dtype(cfg.param_dtype)
    fan_in = int(np.prod(self.in_shape))
    a = self.param("a", nn.with_logical_partitioning(_uniform(fan_in**-0.5),
                                                     self.in_axes + ("lora",)),
                   self.in_shape + (r,), pdt)
    b = self.param("b", nn.with_logical_partitioning(nn.initializers.zeros,
                                                     ("lora",) + self.out_axes),
                   (r,) + self.out_shape, pdt)
    return a, b


def _branch(cfg: T5Config, x_bti, a_ir, b_ro):
  h_btr = jnp.einsum("BTI,IR->BTR", x_bti, a_ir.astype(cfg.dtype))
  return jnp.einsum("BTR,RO->BTO", h_btr, b_ro.astype(cfg.dtype)) * cfg.lora_scale


def lora_delta(parent: nn.Module, target: str, x_bt_, in_axes, out_shape, out_axes,
               deterministic: bool, slots_bt=None):
  """The LoRA branch of projection `target` for input x [B, T, *in] (the input's
  trailing dims are the kernel's input dims): [B, T, *out_shape], or None when the
  model does not adapt `target`. Call from `parent`'s compact method."""
  cfg: T5Config = parent.config
  if not cfg.has_lora(target):
    return None
  b, t = x_bt_.shape[:2]
  in_shape = tuple(x_bt_.shape[2:])
  make = lambda name: LoRA(cfg, in_shape, tuple(in_axes), tuple(out_shape), tuple(out_axes),
                           name=name)
  x_bti = nn.Dropout(cfg.lora_dropout)(x_bt_, deterministic=deterministic).reshape(b, t, -1)
  flat = lambda a, b_: (a.reshape(-1, cfg.lora_rank), b_.reshape(cfg.lora_rank, -1))
  name = lora_name(target)
  if not cfg.peft_per_task:
    y_bto = _branch(cfg, x_bti, *flat(*make(name)()))
  elif parent.is_initializing():
    outputs = [_branch(cfg, x_bti, *flat(*make(slot_blocks.copy_name(name, k))()))
               for k in range(len(cfg.task_slots))]
    y_bto = slot_blocks.select_by_slot(outputs, slots_bt)
  else:
    y_bto = _routed_branch(parent, cfg, name, x_bti, slots_bt)
  return y_bto.reshape((b, t) + tuple(out_shape))


def _routed_branch(parent: nn.Module, cfg: T5Config, name: str, x_bti, slots_bt):
  """Each token's branch with its own slot's A and B (see the module docstring)."""
  blocks = slot_blocks.plan_blocks(jnp.broadcast_to(slots_bt, x_bti.shape[:2]),
                                   len(cfg.task_slots))
  w = slot_blocks.copies_by_block(parent, name, blocks.owner_j, cfg.dtype)
  num_blocks = blocks.owner_j.shape[0]
  a_jir = w["a"].reshape(num_blocks, -1, cfg.lora_rank)
  b_jro = w["b"].reshape(num_blocks, cfg.lora_rank, -1)
  x_jci = slot_blocks.dispatch(blocks, x_bti)
  h_jcr = jnp.einsum("JCI,JIR->JCR", x_jci, a_jir)
  y_jco = jnp.einsum("JCR,JRO->JCO", h_jcr, b_jro) * cfg.lora_scale
  return slot_blocks.combine(blocks, y_jco, x_bti.shape[:2])


def kv_slots(slots_bt, kv_rows: int, kv_length: int):
  """Slots of the key tokens of a cached cross-attention: each row's task (decoding
  runs one example a row; beam search holds one encoder row for G query rows)."""
  groups = slots_bt.shape[0] // kv_rows
  return jnp.broadcast_to(slots_bt[::groups, :1], (kv_rows, kv_length))


def make_prompts(module: nn.Module) -> list:
  """The prompt parameters, [P, D] each: one, or one per task slot. Call from setup."""
  cfg: T5Config = module.config
  init = nn.with_logical_partitioning(_uniform(0.5), ("prompt", "embed"))
  shape, pdt = (cfg.prompt_length, cfg.d_model), jnp.dtype(cfg.param_dtype)
  if not cfg.peft_per_task:
    return [module.param(PROMPT, init, shape, pdt)]
  return [module.param(slot_blocks.copy_name(PROMPT, k), init, shape, pdt)
          for k in range(len(cfg.task_slots))]


def prepend_prompt(prompts: list, x_bsd, slots_bs=None):
  """[B, S, D] -> [B, P + S, D]: the prompt (with one per slot, each row's task's) first."""
  if len(prompts) == 1:
    prompt_bpd = jnp.broadcast_to(prompts[0][None], (x_bsd.shape[0],) + prompts[0].shape)
  else:
    prompt_bpd = jnp.stack(prompts)[slots_bs[:, 0]]
  prompt_bpd = nn.with_logical_constraint(prompt_bpd.astype(x_bsd.dtype),
                                          ("batch", "length", "embed"))
  return jnp.concatenate([prompt_bpd, x_bsd], axis=1)


def prompt_segments(segment_ids_bs, prompt_length: int):
  """Segment ids with the prompt's P positions first, in each row's first segment."""
  first_b1 = segment_ids_bs[:, :1]
  prompt_bp = jnp.broadcast_to(jnp.maximum(first_b1, 1), (segment_ids_bs.shape[0],
                                                          prompt_length))
  return jnp.concatenate([prompt_bp.astype(segment_ids_bs.dtype), segment_ids_bs], axis=1)


def is_peft_path(path: str) -> bool:
  """Whether a parameter path ("encoder/layers_0/attention/lora_q/a", "prompt") is a
  PEFT parameter."""
  parts = path.split("/")
  return any(p.startswith(LORA_PREFIX) for p in parts) or parts[0].startswith(PROMPT)


def trainable_pattern(cfg: T5Config) -> str:
  """OptimizerConfig.trainable for a PEFT model: its LoRA branches and prompts only."""
  del cfg
  return rf"(^|/)({LORA_PREFIX}|{PROMPT}($|{slot_blocks.COPY_SUFFIX}))"


def prompt_keys(cfg: T5Config) -> list[str]:
  """The parameter names of the prompts (top level of the tree)."""
  if not cfg.prompt_length:
    return []
  if not cfg.peft_per_task:
    return [PROMPT]
  return [slot_blocks.copy_name(PROMPT, k) for k in range(len(cfg.task_slots))]


def init_prompts(params, cfg: T5Config, seed: int, labels: dict | None = None):
  """Every prompt set to rows of the embedding table, as Lester et al. initialise:
  first, for `labels[key]` (a list of token-id arrays, a prompt's class labels), the
  mean embedding of each label's tokens; the other rows the embeddings of tokens
  sampled without replacement from PROMPT_VOCAB_IDS. A prompt then starts among the
  vectors the model already reads."""
  rng = np.random.default_rng(seed)
  low, high = PROMPT_VOCAB_IDS[0], min(PROMPT_VOCAB_IDS[1], cfg.vocab_size)
  embedding_vd = params["token_embedder"]
  out = dict(params)
  for key in prompt_keys(cfg):
    label_rows = [jnp.mean(jnp.take(embedding_vd, jnp.asarray(ids), axis=0), axis=0)
                  for ids in (labels or {}).get(key, [])][:cfg.prompt_length]
    ids = rng.choice(np.arange(low, high), size=cfg.prompt_length - len(label_rows),
                     replace=cfg.prompt_length > high - low)
    sampled = jnp.take(embedding_vd, jnp.asarray(ids, np.int32).reshape(-1), axis=0)
    rows = jnp.concatenate([jnp.stack(label_rows), sampled]) if label_rows else sampled
    out[key] = rows.astype(params[key].dtype)
  return out
