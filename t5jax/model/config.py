"""T5 model configuration: one frozen dataclass and one table of published sizes."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re

import jax
import jax.numpy as jnp

# The MLP activations, by their names in transformers' ACT2FN. A feed_forward is
# "ACT" (one input projection) or "gated-ACT" (act(x wi_0) * (x wi_1)), as
# transformers' T5Config.feed_forward_proj; "gated-gelu" means the tanh GELU
# (gelu_new), as it does there.
_TANH_GELU = functools.partial(jax.nn.gelu, approximate=True)
ACTIVATIONS = {
    "relu": jax.nn.relu,
    "relu6": jax.nn.relu6,
    "gelu": functools.partial(jax.nn.gelu, approximate=False),  # exact (erf)
    "gelu_new": _TANH_GELU,
    "gelu_fast": _TANH_GELU,
    "gelu_pytorch_tanh": _TANH_GELU,
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "mish": lambda x: x * jnp.tanh(jax.nn.softplus(x)),
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
}
FEED_FORWARD_KINDS = tuple(ACTIVATIONS) + tuple(f"gated-{a}" for a in ACTIVATIONS)
DTYPES = ("float32", "bfloat16", "float16")
REMAT_POLICIES = ("none", "minimal", "full")
ATTENTION_IMPLS = ("auto", "einsum", "xla", "cudnn")
# The sub-modules of a layer that can have a copy per task (t5.py's names).
LAYER_SUBMODULES = {
    "encoder": ("pre_attention_layer_norm", "attention", "pre_mlp_layer_norm", "mlp"),
    "decoder": ("pre_self_attention_layer_norm", "self_attention",
                "pre_cross_attention_layer_norm", "encoder_decoder_attention",
                "pre_mlp_layer_norm", "mlp"),
}
# LoRA targets by Hugging Face PEFT's module names for T5 (what `target_modules` lists):
# the attention projections (every attention: encoder, decoder self, cross) and the MLP's.
LORA_ATTENTION_TARGETS = {"q": "query", "k": "key", "v": "value", "o": "out"}
LORA_MLP_TARGETS = ("wi", "wi_0", "wi_1", "wo")
LORA_TARGETS = tuple(LORA_ATTENTION_TARGETS) + LORA_MLP_TARGETS


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Hyper-parameters of a T5 encoder-decoder.

  Attributes:
    vocab_size: rows of the embedding table (T5 pads 32,100 pieces to 32,128).
    d_model: width of the residual stream.
    d_kv: width of one attention head (need not be d_model / num_heads).
    d_ff: hidden width of the feed-forward block.
    num_heads: attention heads per layer.
    num_encoder_layers: encoder depth.
    num_decoder_layers: decoder depth.
    relative_attention_num_buckets: buckets of the relative position bias.
    relative_attention_max_distance: distance beyond which buckets saturate.
    relative_attention_per_layer: every layer's self-attention has its own relative
      position bias (UMT5); False: one per stack, shared by its layers (T5, mT5, ByT5).
    dropout_rate: dropout on embeddings, sub-layer outputs and attention weights.
    feed_forward: the MLP, "ACT" or "gated-ACT" with ACT a key of ACTIVATIONS:
      "relu" (T5 1.0), "gated-gelu" (tanh GELU: T5 1.1, mT5, Flan-T5),
      "gated-silu" (UL2, Flan-UL2), "gelu" (exact GELU), ...
    tie_word_embeddings: output projection shares the input embedding; T5 1.0 then
      scales the decoder output by d_model**-0.5 (as Mesh TF and Hugging Face do).
    layer_norm_epsilon: RMS norm epsilon.
    dtype: activation dtype; parameters stay in param_dtype.
    param_dtype: parameter dtype.
    remat_policy: "none", "minimal" (save matmul outputs) or "full" (save nothing)
      per layer, to trade compute for memory.
    scan_layers: run each stack's layers as one `nn.scan` over stacked
      parameters (leading logical axis "layers"): one layer is compiled instead
      of N, which makes large models compile quickly. Same numbers.
    task_slots: names of the per-task parameter slots, for soft sharing and
      adapters (empty: every parameter is shared, as in T5). Each is a task name
      or a regular expression over task names (a task group, e.g. "glue_.*"); a
      task uses the first slot that matches it in full.
    task_specific: layer sub-modules that get a copy per slot (soft parameter
      sharing), as "STACK.NAME" with STACK "encoder" or "decoder" and NAME one of
      LAYER_SUBMODULES[STACK], or "STACK.layer" for all of them (whole layers).
      The shared copy keeps the plain name and is used only as the anchor of the
      L2 penalty (LossConfig.soft_sharing_l2); copies are NAME_task{k}.
    adapter_dim: bottleneck width of a per-slot adapter after every layer's MLP
      (Houlsby/Pfeiffer style, identity at initialisation); 0 for none.
    attention_impl: "einsum" (logits, mask, softmax and weighted sum as einsums),
      "xla" or "cudnn" (jax.nn.dot_product_attention with that implementation;
      cuDNN's fused kernel needs a GPU and bf16/fp16), or "auto": cuDNN on a GPU
      where it applies, else the einsums. Attention dropout always runs the einsums.
    attention_query_block: the einsums' attention computed this many queries at a
      time, each block rematerialised: the [batch, heads, queries, keys] fp32 scores
      are held one block at a time in the backward too, at the cost of recomputing
      each block's scores once more (mT5-base at 512 tokens: 3 x 384 MiB of scores
      become 3 x 96 MiB with 128). Same result; 0 computes all queries at once.
    attention_row_by_row: on a single CPU device, the einsums' attention over rows
      of at least 128 x 128 query-key pairs per head runs one input row at a time,
      so that a row's scores stay in the CPU's cache (attention_kernels.attend_row_by_row).
      Same result; False computes the whole batch at once everywhere.
    lora_rank: LoRA (Hu et al. 2021) on the projections named in lora_targets: W x +
      (lora_alpha / lora_rank) B A dropout(x), A [in, r] and B [r, out] (B zero at
      initialisation, so the model starts as the base); 0 for none. See peft.py.
    lora_alpha: LoRA's scale numerator (PEFT's `lora_alpha`).
    lora_dropout: dropout on the LoRA branch's input (PEFT's `lora_dropout`).
    lora_targets: the projections LoRA adapts, by PEFT's names for T5 (q, k, v, o of
      every attention; wi or wi_0/wi_1, and wo of every MLP). PEFT's T5 default: q, v.
    prompt_length: prompt tuning (Lester et al. 2021): this many learned vectors
      prepended to the encoder's embedded inputs; 0 for none. The encoder then runs
      over prompt_length + inputs_length positions.
    peft_per_task: one LoRA (and prompt) per task slot, each token routed through its
      own task's (needs task_slots); False shares one across tasks.
  """

  vocab_size: int = 32128
  d_model: int = 512
  d_kv: int = 64
  d_ff: int = 2048
  num_heads: int = 8
  num_encoder_layers: int = 6
  num_decoder_layers: int = 6
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  relative_attention_per_layer: bool = False
  dropout_rate: float = 0.1
  feed_forward: str = "relu"
  tie_word_embeddings: bool = True
  layer_norm_epsilon: float = 1e-6
  dtype: str = "bfloat16"
  param_dtype: str = "float32"
  remat_policy: str = "none"
  scan_layers: bool = False
  task_slots: tuple[str, ...] = ()
  task_specific: tuple[str, ...] = ()
  adapter_dim: int = 0
  attention_impl: str = "auto"
  attention_query_block: int = 0
  attention_row_by_row: bool = True
  lora_rank: int = 0
  lora_alpha: float = 32.0
  lora_dropout: float = 0.0
  lora_targets: tuple[str, ...] = ("q", "v")
  prompt_length: int = 0
  peft_per_task: bool = False

  def __post_init__(self):
    # Gin and JSON metadata give lists; the config must stay hashable (a jit static).
    for field in ("task_slots", "task_specific", "lora_targets"):
      object.__setattr__(self, field, tuple(getattr(self, field)))
    self._check_task_parameters()
    self._check_peft()
    if self.feed_forward not in FEED_FORWARD_KINDS:
      raise ValueError(
          f"feed_forward={self.feed_forward!r} is not 'ACT' or 'gated-ACT' with ACT one of "
          f"{', '.join(ACTIVATIONS)}; e.g. 'relu' (T5 1.0), 'gated-gelu' (T5 1.1 / mT5).")
    for field in ("dtype", "param_dtype"):
      if getattr(self, field) not in DTYPES:
        raise ValueError(f"{field}={getattr(self, field)!r} is not one of {DTYPES}.")
    if self.attention_impl not in ATTENTION_IMPLS:
      raise ValueError(
          f"attention_impl={self.attention_impl!r} is not one of {ATTENTION_IMPLS}; "
          "'auto' picks cuDNN's fused kernel on a GPU and the einsums elsewhere.")
    if self.attention_query_block < 0:
      raise ValueError(f"attention_query_block={self.attention_query_block} must be >= 0 "
                       "(0: all queries at once).")
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(
          f"remat_policy={self.remat_policy!r} is not one of {REMAT_POLICIES}.")
    for field in ("vocab_size", "d_model", "d_kv", "d_ff", "num_heads",
                  "num_encoder_layers", "num_decoder_layers",
                  "relative_attention_num_buckets",
                  "relative_attention_max_distance"):
      if getattr(self, field) <= 0:
        raise ValueError(f"{field} must be positive, got {getattr(self, field)}.")
    if not 0.0 <= self.dropout_rate < 1.0:
      raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}.")

  def _check_task_parameters(self):
    for entry in self.task_specific:
      stack, _, name = entry.partition(".")
      known = LAYER_SUBMODULES.get(stack, ())
      if name not in known + ("layer",):
        options = [f"{s}.{n}" for s in LAYER_SUBMODULES for n in LAYER_SUBMODULES[s] + ("layer",)]
        close = difflib.get_close_matches(entry, options, n=2, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"task_specific entry {entry!r} is not a layer sub-module.{hint} "
                         f"Choose from {', '.join(options)}.")
    if self.adapter_dim < 0:
      raise ValueError(f"adapter_dim must be >= 0, got {self.adapter_dim}.")
    if self.has_task_parameters and not self.task_slots:
      raise ValueError("task_specific, adapter_dim and peft_per_task need task_slots (one per "
                       "task or task group), e.g. ModelSettings.task_slots = ('glue_.*', "
                       "'scitldr').")
    for slot in self.task_slots:
      try:
        re.compile(slot)
      except re.error as e:
        raise ValueError(f"task_slots entry {slot!r} is not a valid regular expression: {e}."
                         ) from None

  def _check_peft(self):
    if self.lora_rank < 0 or self.prompt_length < 0:
      raise ValueError(f"lora_rank ({self.lora_rank}) and prompt_length ({self.prompt_length}) "
                       "must be >= 0 (0: no LoRA, no prompt).")
    if not 0.0 <= self.lora_dropout < 1.0:
      raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}.")
    if self.lora_rank:
      mlp_names = ("wi_0", "wi_1", "wo") if self.gated_mlp else ("wi", "wo")
      for target in self.lora_targets:
        if target in LORA_ATTENTION_TARGETS or target in mlp_names:
          continue
        close = difflib.get_close_matches(target, LORA_TARGETS, n=2, cutoff=0.3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"lora_targets entry {target!r} is not a projection of this model.{hint} Choose "
            f"from {', '.join(tuple(LORA_ATTENTION_TARGETS) + mlp_names)} (PEFT's names).")
      for target in self.lora_targets:
        fan_in, fan_out = self.lora_fans(target)
        if self.lora_rank > min(fan_in, fan_out):
          raise ValueError(
              f"lora_rank={self.lora_rank} exceeds projection {target!r}'s width "
              f"({fan_in} -> {fan_out}); choose a rank <= {min(fan_in, fan_out)}.")
    routed = [e for e in self.task_specific
              if e.split(".")[1] in ("attention", "self_attention", "encoder_decoder_attention",
                                     "mlp", "layer")]
    if self.lora_rank and routed:
      raise ValueError(f"LoRA and task_specific {routed} both change the projections; choose "
                       "one (for a LoRA per task: peft_per_task=True without task_specific).")
    if self.peft_per_task and not (self.lora_rank or self.prompt_length):
      # (Its task_slots are checked with the other per-task parameters'.)
      raise ValueError("peft_per_task needs LoRA (lora_rank) or a prompt (prompt_length), e.g. "
                       "PeftConfig.lora_rank = 8 with PeftConfig.per_task = True and "
                       "ModelSettings.task_slots = ('glue_.*', 'scitldr').")
  def lora_fans(self, target: str) -> tuple[int, int]:
    """(inputs, outputs) of the projection a LoRA target adapts."""
    inner = self.num_heads * self.d_kv
    return {"q": (self.d_model, inner), "k": (self.d_model, inner), "v": (self.d_model, inner),
            "o": (inner, self.d_model), "wi": (self.d_model, self.d_ff),
            "wi_0": (self.d_model, self.d_ff), "wi_1": (self.d_model, self.d_ff),
            "wo": (self.d_ff, self.d_model)}[target]

  @property
  def peft(self) -> bool:
    """Whether the model has LoRA or a prompt (parameter-efficient fine-tuning)."""
    return bool(self.lora_rank or self.prompt_length)

  @property
  def lora_scale(self) -> float:
    """The LoRA branch's factor, alpha / r (as PEFT scales it)."""
    return self.lora_alpha / self.lora_rank

  def has_lora(self, target: str) -> bool:
    return bool(self.lora_rank) and target in self.lora_targets

  @property
  def gated_mlp(self) -> bool:
    """Whether the MLP has two input projections, wi_0 (activated) and wi_1."""
    return self.feed_forward.startswith("gated-")

  @property
  def mlp_activation(self) -> str:
    """The MLP's activation, as a key of ACTIVATIONS."""
    if self.feed_forward == "gated-gelu":
      return "gelu_new"
    return self.feed_forward.removeprefix("gated-")

  @property
  def has_task_parameters(self) -> bool:
    return bool(self.task_specific or self.adapter_dim or self.peft_per_task)

  def is_task_specific(self, stack: str, name: str) -> bool:
    """Whether sub-module `name` of `stack`'s layers has a copy per task slot."""
    return f"{stack}.{name}" in self.task_specific or f"{stack}.layer" in self.task_specific

  def slot_of_task(self, task: str) -> int:
    """Index of the first slot matching `task` in full.

    Raises:
      ValueError: one line naming the slots, when none matches.
    """
    for k, slot in enumerate(self.task_slots):
      if re.fullmatch(slot, task):
        return k
    raise ValueError(
        f"Task {task!r} matches none of the model's task_slots {list(self.task_slots)}; "
        "add the task (or a pattern that matches it) to task_slots.")

  def replace(self, **changes) -> "T5Config":
    return dataclasses.replace(self, **changes)


_T5_1_0 = dict(feed_forward="relu", tie_word_embeddings=True, dropout_rate=0.1)
# T5 1.1 / mT5 pretrain without dropout; fine-tuning configs turn it back on.
_T5_1_1 = dict(feed_forward="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0)


def _layers(n):
  return dict(num_encoder_layers=n, num_decoder_layers=n)


_T5_1_0_TINY_WIDTH = dict(_T5_1_0, d_model=128, d_kv=32, d_ff=512, num_heads=4)

# Published sizes (t5-*, t5-v1_1-*, mt5-*). "tiny" is ours, for tests and the CPU demo.
SIZES: dict[str, dict] = {
    "t5_1_0_tiny": dict(_T5_1_0_TINY_WIDTH, **_layers(2)),
    # The demo's shape: tiny's width, twice its depth. At a 32k vocabulary the output
    # layer is most of tiny's FLOPs, so two more layers per stack cost ~20 % more per
    # step and train better for the same FLOPs (docs/performance/demo.md, the recipe).
    "t5_1_0_mini": dict(_T5_1_0_TINY_WIDTH, **_layers(4)),
    "t5_1_0_small": dict(_T5_1_0, d_model=512, d_kv=64, d_ff=2048, num_heads=8, **_layers(6)),
    "t5_1_0_base": dict(_T5_1_0, d_model=768, d_kv=64, d_ff=3072, num_heads=12, **_layers(12)),
    "t5_1_0_large": dict(_T5_1_0, d_model=1024, d_kv=64, d_ff=4096, num_heads=16, **_layers(24)),
    "t5_1_0_xl": dict(_T5_1_0, d_model=1024, d_kv=128, d_ff=16384, num_heads=32, **_layers(24)),
    "t5_1_0_xxl": dict(_T5_1_0, d_model=1024, d_kv=128, d_ff=65536, num_heads=128, **_layers(24)),
    "t5_1_1_tiny": dict(_T5_1_1, d_model=128, d_kv=32, d_ff=320, num_heads=4, **_layers(2)),
    "t5_1_1_small": dict(_T5_1_1, d_model=512, d_kv=64, d_ff=1024, num_heads=6, **_layers(8)),
    "t5_1_1_base": dict(_T5_1_1, d_model=768, d_kv=64, d_ff=2048, num_heads=12, **_layers(12)),
    "t5_1_1_large": dict(_T5_1_1, d_model=1024, d_kv=64, d_ff=2816, num_heads=16, **_layers(24)),
    "t5_1_1_xl": dict(_T5_1_1, d_model=2048, d_kv=64, d_ff=5120, num_heads=32, **_layers(24)),
    "t5_1_1_xxl": dict(_T5_1_1, d_model=4096, d_kv=64, d_ff=10240, num_heads=64, **_layers(24)),
}
# mT5 is T5 1.1 with a 250k multilingual vocabulary.
for _size in ("small", "base", "large", "xl", "xxl"):
  SIZES[f"mt5_{_size}"] = dict(SIZES[f"t5_1_1_{_size}"], vocab_size=250112)
# mT5-small has 6 heads of 64 and d_ff 1024, 8 layers, like T5 1.1 small.

# ByT5 (Xue et al. 2022): T5 1.1 on UTF-8 bytes (384 ids: 3 special, 256 bytes, 125
# sentinels) with a deep encoder (3x the decoder's layers) and wider MLPs; the published
# sizes (300M, 582M, 1.23B, 3.74B, 12.9B parameters) as google/byt5-* configure them.
_BYT5 = dict(_T5_1_1, vocab_size=384, d_kv=64)
SIZES.update({
    "byt5_small": dict(_BYT5, d_model=1472, d_ff=3584, num_heads=6, num_encoder_layers=12,
                       num_decoder_layers=4),
    "byt5_base": dict(_BYT5, d_model=1536, d_ff=3968, num_heads=12, num_encoder_layers=18,
                      num_decoder_layers=6),
    "byt5_large": dict(_BYT5, d_model=1536, d_ff=3840, num_heads=16, num_encoder_layers=36,
                       num_decoder_layers=12),
    "byt5_xl": dict(_BYT5, d_model=2560, d_ff=6720, num_heads=32, num_encoder_layers=36,
                    num_decoder_layers=12),
    "byt5_xxl": dict(_BYT5, d_model=4672, d_ff=12352, num_heads=64, num_encoder_layers=36,
                     num_decoder_layers=12),
})
# UMT5 (Chung et al. 2023): mT5's shapes with a relative position bias in every layer of
# both stacks and a 256k vocabulary (google/umt5-small, -base, -xl, -xxl).
for _size in ("small", "base", "xl", "xxl"):
  SIZES[f"umt5_{_size}"] = dict(SIZES[f"t5_1_1_{_size}"], vocab_size=256384,
                                relative_attention_per_layer=True)


def get_config(name: str, **overrides) -> T5Config:
  """Returns the named size from SIZES with `overrides` applied.

  Raises:
    ValueError: one line naming the closest known sizes.
  """
  if name not in SIZES:
    close = difflib.get_close_matches(name, SIZES, n=3, cutoff=0.4)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(
        f"Unknown model size {name!r}.{hint} Known sizes: {', '.join(sorted(SIZES))}.")
  return T5Config(**{**SIZES[name], **overrides})
