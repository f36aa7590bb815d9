"""Hugging Face T5 state dict ⇄ t5jax parameter tree, as numpy float32 arrays.

One table (`_entries`) lists every tensor: its Hugging Face name, its path in our
tree and how its layout changes. torch Linear weights are [out, in]; ours are
[in, out] with the heads split out: q/k/v [N*H, D] ⇄ [D, N, H], o [D, N*H] ⇄
[N, H, D]. Transposes and reshapes only, so conversion is exact both ways.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import NamedTuple

import numpy as np

from t5jax.model.config import T5Config

EMBEDDING_KEYS = ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
LM_HEAD_KEY = "lm_head.weight"
# Old checkpoints carry an unused cross-attention position bias; transformers ignores it too.
IGNORED_KEYS = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)


class _Entry(NamedTuple):
  hf_key: str
  path: tuple[str, ...]
  kind: str  # "same", "dense" (transpose), "qkv" or "out" (transpose and split heads)
  hf_shape: tuple[int, ...]


def _attention(hf_prefix, path, cfg) -> Iterator[_Entry]:
  inner, d = cfg.num_heads * cfg.d_kv, cfg.d_model
  for hf_name, name in (("q", "query"), ("k", "key"), ("v", "value")):
    yield _Entry(f"{hf_prefix}.{hf_name}.weight", (*path, name), "qkv", (inner, d))
  yield _Entry(f"{hf_prefix}.o.weight", (*path, "out"), "out", (d, inner))


def _mlp(hf_prefix, path, cfg) -> Iterator[_Entry]:
  d, f = cfg.d_model, cfg.d_ff
  wis = ("wi_0", "wi_1") if cfg.gated_mlp else ("wi",)
  for name in wis:
    yield _Entry(f"{hf_prefix}.{name}.weight", (*path, name), "dense", (f, d))
  yield _Entry(f"{hf_prefix}.wo.weight", (*path, "wo"), "dense", (d, f))


def _norm(hf_key, path, cfg) -> _Entry:
  return _Entry(hf_key, (*path, "scale"), "same", (cfg.d_model,))


def _entries(cfg: T5Config) -> list[_Entry]:
  """Every tensor of the model except the embedding aliases, in Hugging Face order."""
  out = [_Entry("shared.weight", ("token_embedder",), "same", (cfg.vocab_size, cfg.d_model))]
  # Decoder sub-layers: self-attention, cross-attention, MLP; the encoder has no cross.
  stacks = {
      "encoder": (cfg.num_encoder_layers,
                  [("SelfAttention", "attention", "pre_attention_layer_norm")], "encoder_norm"),
      "decoder": (cfg.num_decoder_layers,
                  [("SelfAttention", "self_attention", "pre_self_attention_layer_norm"),
                   ("EncDecAttention", "encoder_decoder_attention",
                    "pre_cross_attention_layer_norm")],
                  "decoder_norm"),
  }
  for stack, (depth, attentions, final_norm) in stacks.items():
    for i in range(depth):
      block, path = f"{stack}.block.{i}", (stack, f"layers_{i}")
      for j, (hf_name, name, norm) in enumerate(attentions):
        out += _attention(f"{block}.layer.{j}.{hf_name}", (*path, name), cfg)
        out.append(_norm(f"{block}.layer.{j}.layer_norm.weight", (*path, norm), cfg))
        if j == 0 and (i == 0 or cfg.relative_attention_per_layer):
          # T5: one position bias per stack, stored in its first block; UMT5: one per layer.
          owner = path if cfg.relative_attention_per_layer else (stack,)
          out.append(_Entry(f"{block}.layer.0.SelfAttention.relative_attention_bias.weight",
                            (*owner, "relpos_bias", "rel_embedding"), "same",
                            (cfg.relative_attention_num_buckets, cfg.num_heads)))
      j = len(attentions)
      out += _mlp(f"{block}.layer.{j}.DenseReluDense", (*path, "mlp"), cfg)
      out.append(_norm(f"{block}.layer.{j}.layer_norm.weight", (*path, "pre_mlp_layer_norm"),
                       cfg))
    out.append(_norm(f"{stack}.final_layer_norm.weight", (stack, final_norm), cfg))
  if not cfg.tie_word_embeddings:
    out.append(_Entry(LM_HEAD_KEY, ("decoder", "logits_dense"), "dense",
                      (cfg.vocab_size, cfg.d_model)))
  return out


def _to_ours(x: np.ndarray, entry: _Entry, cfg: T5Config) -> np.ndarray:
  d, n, h = cfg.d_model, cfg.num_heads, cfg.d_kv
  if entry.kind == "qkv":
    x = x.T.reshape(d, n, h)
  elif entry.kind == "out":
    x = x.T.reshape(n, h, d)
  elif entry.kind == "dense":
    x = x.T
  return np.ascontiguousarray(x, dtype=np.float32)


def _our_shape(entry: _Entry, cfg: T5Config) -> tuple[int, ...]:
  d, n, h = cfg.d_model, cfg.num_heads, cfg.d_kv
  return {"qkv": (d, n, h), "out": (n, h, d), "dense": entry.hf_shape[::-1],
          "same": entry.hf_shape}[entry.kind]


def _to_hf(x: np.ndarray, entry: _Entry, cfg: T5Config) -> np.ndarray:
  d, inner = cfg.d_model, cfg.num_heads * cfg.d_kv
  if entry.kind == "qkv":
    x = x.reshape(d, inner).T
  elif entry.kind == "out":
    x = x.reshape(inner, d).T
  elif entry.kind == "dense":
    x = x.T
  return np.ascontiguousarray(x, dtype=np.float32)


def _dims(cfg: T5Config) -> str:
  return (f"vocab_size={cfg.vocab_size}, d_model={cfg.d_model}, num_heads={cfg.num_heads}, "
          f"d_kv={cfg.d_kv}, d_ff={cfg.d_ff}, "
          f"relative_attention_num_buckets={cfg.relative_attention_num_buckets}")


def _layout(cfg: T5Config) -> str:
  return (f"{cfg.num_encoder_layers} encoder / {cfg.num_decoder_layers} decoder layers, "
          f"feed_forward={cfg.feed_forward!r}, tie_word_embeddings={cfg.tie_word_embeddings}")


def _check_shape(name: str, shape, expected, cfg: T5Config, where: str) -> None:
  if tuple(shape) != tuple(expected):
    raise ValueError(f"{where} {name!r} has shape {tuple(shape)} but the config expects "
                     f"{tuple(expected)} ({_dims(cfg)}); make the config match the weights.")


def _embedding(state: Mapping[str, np.ndarray]) -> tuple[str, np.ndarray]:
  """The input embedding, from whichever alias the checkpoint stores (they must agree)."""
  present = [k for k in EMBEDDING_KEYS if k in state]
  if not present:
    raise ValueError(f"checkpoint has no input embedding: none of {', '.join(EMBEDDING_KEYS)}.")
  first = np.asarray(state[present[0]])
  for key in present[1:]:
    other = np.asarray(state[key])
    if other.shape != first.shape or not np.array_equal(other, first):
      raise ValueError(f"checkpoint tensors {present[0]!r} and {key!r} differ; t5jax shares "
                       "one embedding between encoder and decoder and cannot load this model.")
  return present[0], first


def params_from_hf_state_dict(state: Mapping[str, np.ndarray], cfg: T5Config) -> dict:
  """Converts a Hugging Face T5 state dict to our parameter tree.

  Args:
    state: tensor name -> array (any float dtype), e.g. from a safetensors file.
    cfg: the model's config (see hf_config.t5config_from_hf).
  Returns:
    The nested dict of float32 numpy arrays that `t5.Transformer(cfg).init` makes.
  Raises:
    ValueError: one line naming a missing, unexpected or misshapen tensor.
  """
  state = dict(state)
  emb_key, embedding = _embedding(state)
  used = set(EMBEDDING_KEYS) | set(IGNORED_KEYS)
  state["shared.weight"] = embedding
  if cfg.tie_word_embeddings:
    used.add(LM_HEAD_KEY)
    head = state.get(LM_HEAD_KEY)
    # A tied checkpoint may repeat the embedding as lm_head; a different one is untied.
    if head is not None and not np.array_equal(np.asarray(head), embedding):
      raise ValueError(
          f"checkpoint has an {LM_HEAD_KEY!r} that differs from {emb_key!r}, but its config "
          "scales the decoder output as tied T5 1.0 does; t5jax cannot represent a scaled, "
          "untied output layer.")
  elif LM_HEAD_KEY not in state:
    # transformers then ties lm_head to the embedding without scaling: an untied copy
    # computes exactly that.
    state[LM_HEAD_KEY] = embedding

  params: dict = {}
  missing = []
  for entry in _entries(cfg):
    used.add(entry.hf_key)
    if entry.hf_key not in state:
      missing.append(entry.hf_key)
      continue
    x = np.asarray(state[entry.hf_key])
    _check_shape(entry.hf_key, x.shape, entry.hf_shape, cfg, "checkpoint tensor")
    node = params
    for name in entry.path[:-1]:
      node = node.setdefault(name, {})
    node[entry.path[-1]] = _to_ours(x, entry, cfg)
  if missing:
    raise ValueError(f"checkpoint lacks {len(missing)} tensor(s) the config needs, first "
                     f"{missing[0]!r} (config: {_layout(cfg)}); make the config match the weights.")
  unexpected = sorted(set(state) - used)
  if unexpected:
    raise ValueError(f"checkpoint has {len(unexpected)} tensor(s) the config does not use, first "
                     f"{unexpected[0]!r} (config: {_layout(cfg)}); make the config match the "
                     "weights.")
  return params


def _flatten(tree: Mapping, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], object]:
  flat = {}
  for name, value in tree.items():
    if isinstance(value, Mapping):
      flat.update(_flatten(value, (*prefix, name)))
    else:
      flat[(*prefix, name)] = value
  return flat


def hf_state_dict_from_params(params: Mapping, cfg: T5Config) -> dict[str, np.ndarray]:
  """Converts our parameter tree (boxed or not, any float dtype) to a Hugging Face state dict.

  Returns:
    tensor name -> C-contiguous float32 numpy array, as T5ForConditionalGeneration names
    them; `lm_head.weight` only when the output layer is untied.
  Raises:
    ValueError: one line naming a missing, unexpected or misshapen parameter.
  """
  import flax.linen as nn  # deferred: only needed to unbox logically partitioned params

  flat = _flatten(nn.meta.unbox(params))
  entries = _entries(cfg)
  missing = [e.path for e in entries if e.path not in flat]
  if missing:
    raise ValueError(f"params lack {len(missing)} parameter(s), first {'/'.join(missing[0])!r} "
                     f"(config: {_layout(cfg)}); pass the params of a model built from this "
                     "config.")
  extra = sorted(set(flat) - {e.path for e in entries})
  if extra:
    raise ValueError(f"params have {len(extra)} parameter(s) the config does not use, first "
                     f"{'/'.join(extra[0])!r} (config: {_layout(cfg)}); pass the params of a "
                     "model built from this config.")
  state = {}
  for entry in entries:
    x = np.asarray(flat[entry.path], dtype=np.float32)
    _check_shape("/".join(entry.path), x.shape, _our_shape(entry, cfg), cfg, "parameter")
    state[entry.hf_key] = _to_hf(x, entry, cfg)
  return state
