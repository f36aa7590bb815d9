"""Hugging Face PEFT adapter directories <-> t5jax LoRA and prompt parameters.

A PEFT directory holds adapter_config.json (peft_type, r, lora_alpha, target_modules,
...) and adapter_model.safetensors, whose tensors PEFT names after the module they
adapt in T5ForConditionalGeneration:

  base_model.model.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight   [r, in]
  base_model.model.encoder.block.0.layer.0.SelfAttention.q.lora_B.weight   [out, r]
  prompt_embeddings                                                        [P, D]

Ours are lora_{target}/a [*in, r] and b [r, *out] beside the kernel they adapt
(model/peft.py), so each tensor is a transpose and a reshape: exact both ways. Prompt
tuning is written with num_transformer_submodules 1 (the prompt before the encoder's
inputs only), which is what t5jax computes.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterator, Mapping
from typing import NamedTuple

import jax
import numpy as np
from safetensors.numpy import save_file

from t5jax.interop import hf_weights
from t5jax.model import peft, slot_blocks, trainable
from t5jax.model.config import LORA_ATTENTION_TARGETS, T5Config

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PREFIX = "base_model.model."
PROMPT_KEY = "prompt_embeddings"
# adapter_config.json settings t5jax computes differently, with the value it needs.
_REQUIRED = {"fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
             "bias": "none", "layers_to_transform": None, "rank_pattern": {},
             "alpha_pattern": {}}


class LoraEntry(NamedTuple):
  module: str               # PEFT's module name, e.g. encoder.block.0.layer.0.SelfAttention.q
  path: tuple[str, ...]     # our LoRA sub-module, e.g. (encoder, layers_0, attention, lora_q)
  target: str               # q, k, v, o, wi, wi_0, wi_1, wo
  in_shape: tuple[int, ...]
  out_shape: tuple[int, ...]


def lora_entries(cfg: T5Config) -> Iterator[LoraEntry]:
  """Every LoRA branch of `cfg` (unrolled layers), in Hugging Face order."""
  d, n, h = cfg.d_model, cfg.num_heads, cfg.d_kv
  shapes = {"qkv": ((d,), (n, h)), "out": ((n, h), (d,))}
  for entry in hf_weights._entries(cfg):  # pylint: disable=protected-access
    module, _, leaf = entry.hf_key.rpartition(".")
    target = module.rpartition(".")[2]
    if leaf != "weight" or not cfg.has_lora(target) or entry.kind == "same":
      continue
    if entry.path[-1] == "logits_dense":
      continue
    in_shape, out_shape = shapes.get(entry.kind, ((entry.hf_shape[1],), (entry.hf_shape[0],)))
    yield LoraEntry(module, (*entry.path[:-1], peft.lora_name(target)), target, in_shape,
                    out_shape)


def _node(tree: Mapping, path: tuple[str, ...]):
  for key in path:
    tree = tree[key]
  return tree


def adapter_config(cfg: T5Config, base_model: str | None = None) -> dict:
  """adapter_config.json for `cfg`'s LoRA, or its prompt when it has no LoRA."""
  common = {"task_type": "SEQ_2_SEQ_LM", "base_model_name_or_path": base_model,
            "inference_mode": True, "revision": None}
  if cfg.lora_rank:
    return {**common, "peft_type": "LORA", "r": cfg.lora_rank, "lora_alpha": cfg.lora_alpha,
            "lora_dropout": cfg.lora_dropout, "target_modules": sorted(cfg.lora_targets),
            "init_lora_weights": True, "modules_to_save": None, "layers_pattern": None,
            **_REQUIRED}
  return {**common, "peft_type": "PROMPT_TUNING", "num_virtual_tokens": cfg.prompt_length,
          "token_dim": cfg.d_model, "num_transformer_submodules": 1,
          "num_attention_heads": cfg.num_heads, "num_layers": cfg.num_encoder_layers,
          "prompt_tuning_init": "RANDOM"}


def adapter_state_dict(cfg: T5Config, params: Mapping, slot: int | None = None
                       ) -> dict[str, np.ndarray]:
  """PEFT's tensors from our unrolled parameters (slot k's copies for per-task ones)."""
  suffix = "" if slot is None else slot_blocks.copy_name("", slot)
  state = {}
  if cfg.lora_rank:
    for e in lora_entries(cfg):
      node = _node(params, e.path[:-1])[e.path[-1] + suffix]
      a = np.asarray(node["a"], np.float32).reshape(-1, cfg.lora_rank)
      b = np.asarray(node["b"], np.float32).reshape(cfg.lora_rank, -1)
      state[f"{PREFIX}{e.module}.lora_A.weight"] = np.ascontiguousarray(a.T)
      state[f"{PREFIX}{e.module}.lora_B.weight"] = np.ascontiguousarray(b.T)
  else:
    state[PROMPT_KEY] = np.ascontiguousarray(np.asarray(params[peft.PROMPT + suffix],
                                                        np.float32))
  return state


def save_adapter_dir(cfg: T5Config, params: Mapping, path: str | os.PathLike,
                     slot: int | None = None, base_model: str | None = None) -> None:
  """Writes a PEFT adapter directory (PeftModel.from_pretrained loads it on the base).

  Raises:
    ValueError: the model has both LoRA and a prompt (one PEFT adapter holds one kind).
  """
  if cfg.lora_rank and cfg.prompt_length:
    raise ValueError("This model has LoRA and a prompt; a PEFT adapter holds one method. "
                     "Export the merged model (--merge folds the LoRA in) or train one method.")
  state = adapter_state_dict(cfg, params, slot)
  path = pathlib.Path(path)
  path.mkdir(parents=True, exist_ok=True)
  (path / CONFIG_NAME).write_text(json.dumps(adapter_config(cfg, base_model), indent=2) + "\n")
  save_file(state, path / WEIGHTS_NAME, metadata={"format": "pt"})


def read_adapter_config(path: str | os.PathLike) -> dict:
  file = pathlib.Path(path) / CONFIG_NAME
  if not file.is_file():
    raise FileNotFoundError(f"{file} not found; a PEFT adapter directory holds {CONFIG_NAME} "
                            f"and {WEIGHTS_NAME} (PeftModel.save_pretrained writes them).")
  return json.loads(file.read_text())


def config_with_adapter(base: T5Config, raw: dict, where: str) -> T5Config:
  """The base model's config with the adapter's LoRA or prompt settings.

  Raises:
    ValueError: an adapter kind or setting t5jax does not compute, in one line.
  """
  kind = raw.get("peft_type")
  if kind == "PROMPT_TUNING":
    if raw.get("num_transformer_submodules", 1) != 1:
      raise ValueError(f"{where} prepends its prompt to the decoder too "
                       f"(num_transformer_submodules={raw['num_transformer_submodules']}); "
                       "t5jax's prompt tuning prepends to the encoder only: train it with "
                       "num_transformer_submodules=1.")
    if raw.get("token_dim", base.d_model) != base.d_model:
      raise ValueError(f"{where} was made for a model of width {raw['token_dim']}, the base "
                       f"has d_model={base.d_model}; load it on the base it was trained on.")
    return base.replace(prompt_length=int(raw["num_virtual_tokens"]))
  if kind != "LORA":
    raise ValueError(f"{where} is a {kind!r} adapter; t5jax reads LORA and PROMPT_TUNING.")
  empty = lambda v: None if v in (None, {}, [], False) else v
  for key, needed in _REQUIRED.items():
    if empty(raw.get(key, needed)) != empty(needed):
      raise ValueError(f"{where} sets {key}={raw[key]!r}; t5jax computes LoRA with "
                       f"{key}={needed!r} only.")
  targets = raw.get("target_modules")
  if isinstance(targets, str) or not targets:
    raise ValueError(f"{where} names its targets as {targets!r}; t5jax needs a list of "
                     "module names (q, k, v, o, wi, wi_0, wi_1, wo).")
  return base.replace(lora_rank=int(raw["r"]), lora_alpha=float(raw["lora_alpha"]),
                      lora_dropout=float(raw.get("lora_dropout", 0.0)),
                      lora_targets=tuple(sorted(targets)))


def params_from_adapter(cfg: T5Config, state: Mapping[str, np.ndarray], where: str) -> dict:
  """Our unrolled LoRA or prompt parameters from PEFT's tensors (cfg: the adapter's).

  Raises:
    ValueError: a tensor missing, unexpected or misshapen (an adapter made for another
      base model), named in one line.
  """
  if cfg.prompt_length:
    x = state.get(PROMPT_KEY)
    if x is None or tuple(x.shape) != (cfg.prompt_length, cfg.d_model):
      raise ValueError(f"{where} has no {PROMPT_KEY} of shape ({cfg.prompt_length}, "
                       f"{cfg.d_model}); it was made for another base model.")
    return {peft.PROMPT: np.asarray(x, np.float32)}
  expected = {}
  for e in lora_entries(cfg):
    for name, shape in (("lora_A", (cfg.lora_rank, int(np.prod(e.in_shape)))),
                        ("lora_B", (int(np.prod(e.out_shape)), cfg.lora_rank))):
      expected[f"{PREFIX}{e.module}.{name}.weight"] = (e, name, shape)
  extra = sorted(set(state) - set(expected))
  if extra:
    raise ValueError(f"{where} has tensor {extra[0]!r} ({len(extra)} unexpected) that this base "
                     "model does not have; it was made for another base model.")
  missing = sorted(set(expected) - set(state))
  if missing:
    raise ValueError(f"{where} lacks tensor {missing[0]!r} ({len(missing)} missing); it was "
                     "made for another base model or other target_modules.")
  params: dict = {}
  for key, (e, name, shape) in expected.items():
    x = np.asarray(state[key], np.float32)
    if tuple(x.shape) != shape:
      raise ValueError(f"{where} tensor {key!r} has shape {tuple(x.shape)}, this base model "
                       f"needs {shape}; the adapter was made for another base model.")
    node = params
    for part in e.path:
      node = node.setdefault(part, {})
    if name == "lora_A":
      node["a"] = np.ascontiguousarray(x.T.reshape(e.in_shape + (cfg.lora_rank,)))
    else:
      node["b"] = np.ascontiguousarray(x.T.reshape((cfg.lora_rank,) + e.out_shape))
  return params


def merged(cfg: T5Config, params: Mapping, slot: int | None = None) -> tuple[T5Config, dict]:
  """A plain T5 (config, unrolled numpy params) with every LoRA delta folded into the
  kernel it adapts: W + (alpha / r) A B, reshaped to W's layout.

  Raises:
    ValueError: the model has a prompt, which no kernel can absorb.
  """
  if cfg.prompt_length:
    raise ValueError("A prompt-tuned model cannot be merged into plain T5 weights (the prompt "
                     "is extra input positions); export the PEFT adapter instead (no --merge).")
  suffix = "" if slot is None else slot_blocks.copy_name("", slot)
  out = jax.tree.map(lambda x: x, params)  # new dicts: the kernels are replaced below
  for e in lora_entries(cfg):
    node = _node(out, e.path[:-1])
    lora = node[e.path[-1] + suffix]
    kernel_name = LORA_ATTENTION_TARGETS.get(e.target, e.target)
    w = np.asarray(node[kernel_name], np.float32)
    a = np.asarray(lora["a"], np.float32).reshape(-1, cfg.lora_rank)
    b = np.asarray(lora["b"], np.float32).reshape(cfg.lora_rank, -1)
    node[kernel_name] = (w + cfg.lora_scale * (a @ b).reshape(w.shape)).astype(np.float32)
  plain = cfg.replace(lora_rank=0, prompt_length=0, peft_per_task=False,
                      task_slots=() if not (cfg.task_specific or cfg.adapter_dim)
                      else cfg.task_slots)
  return plain, trainable.parts(out, peft.trainable_pattern(cfg))[1]  # without the LoRA
