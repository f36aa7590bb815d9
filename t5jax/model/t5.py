"""The T5 encoder-decoder (1.0, 1.1 and mT5 variants), with separate encode/decode.

Parameter tree (the names t5x uses, so that conversion tables stay short):
  token_embedder                                [vocab, embed]
  encoder/relpos_bias/rel_embedding             [relpos_buckets, heads]
  encoder/layers_{i}/{pre_attention_layer_norm, attention, pre_mlp_layer_norm, mlp}
  encoder/encoder_norm
  decoder/relpos_bias/rel_embedding
  decoder/layers_{i}/{pre_self_attention_layer_norm, self_attention,
                      pre_cross_attention_layer_norm, encoder_decoder_attention,
                      pre_mlp_layer_norm, mlp}
  decoder/decoder_norm
  decoder/logits_dense                          [embed, vocab]  (untied only)
With task slots (T5Config.task_slots), a task-specific sub-module NAME also has
copies NAME_task{k}, and adapters are layers_{i}/adapter_task{k}; see task_routing.py.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5jax.model import devices, layers, peft, task_routing
from t5jax.model.config import T5Config

constrain = nn.with_logical_constraint

_REMAT_POLICIES = {
    "minimal": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    "full": jax.checkpoint_policies.nothing_saveable,
}


def _maybe_remat(layer_cls, config: T5Config):
  if config.remat_policy == "none":
    return layer_cls
  return nn.remat(layer_cls, policy=_REMAT_POLICIES[config.remat_policy])


class _ScanStep(nn.Module):
  """Adapts a layer to nn.scan's (carry, x) -> (carry, y) signature."""
  layer_cls: type
  config: T5Config
  deterministic: bool
  decode: bool = False

  @nn.compact
  def __call__(self, x_btd, *args):
    kwargs = {"decode": self.decode} if self.layer_cls is not EncoderLayer else {}
    layer = _maybe_remat(self.layer_cls, self.config)(
        self.config, self.deterministic, name="layer", **kwargs)
    return layer(x_btd, *args), None


def run_layers(module: nn.Module, layer_cls, num_layers: int, x_btd, args, deterministic,
               decode=None):
  """Applies `num_layers` layers: unrolled (layers_0 ... layers_N-1) or as one scan
  over parameters stacked on a leading "layers" axis (config.scan_layers)."""
  cfg = module.config
  kwargs = {} if decode is None else {"decode": decode}
  if not cfg.scan_layers:
    layer = _maybe_remat(layer_cls, cfg)
    for i in range(num_layers):
      x_btd = layer(cfg, deterministic, name=f"layers_{i}", **kwargs)(x_btd, *args)
    return x_btd
  scanned = nn.scan(
      _ScanStep, variable_axes={"params": 0, "cache": 0, "decode_layouts": 0},
      split_rngs={"params": True, "dropout": True}, in_axes=(nn.broadcast,) * len(args),
      length=num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
  x_btd, _ = scanned(layer_cls, cfg, deterministic, name="layers", **kwargs)(x_btd, *args)
  return x_btd


def attention_masks(encoder_segment_ids_bs, decoder_segment_ids_bt):
  """Boolean masks that keep attention inside packed segments and off padding.

  Args:
    encoder_segment_ids_bs: [B, S] int, 0 on padding.
    decoder_segment_ids_bt: [B, T] int (0 on padding) or None (one segment).
  Returns:
    (encoder self mask [B,S,S], decoder self mask [B,T,T], cross mask [B,T,S]).
  """
  enc = encoder_segment_ids_bs
  enc_valid_b1s = (enc > 0)[:, None, :]
  encoder_mask = (enc[:, :, None] == enc[:, None, :]) & enc_valid_b1s
  if decoder_segment_ids_bt is None:
    return encoder_mask, None, enc_valid_b1s
  dec = decoder_segment_ids_bt
  cross_mask = (dec[:, :, None] == enc[:, None, :]) & enc_valid_b1s
  decoder_mask = dec[:, :, None] == dec[:, None, :]
  return encoder_mask, decoder_mask, cross_mask


def causal_mask(length: int):
  return jnp.tril(jnp.ones((length, length), bool))[None]


def _lora_slots(cfg: T5Config, slots_bt) -> dict:
  """The MLP's keyword for per-task LoRA (none otherwise)."""
  return {"slots_bt": slots_bt} if cfg.peft_per_task else {}


class EncoderLayer(nn.Module):
  config: T5Config
  deterministic: bool

  @nn.compact
  def __call__(self, x_btd, mask_bts, bias_nts, slots_bt=None):
    cfg = self.config
    dropout = nn.Dropout(cfg.dropout_rate)
    sub = lambda make, name, *args, **kw: task_routing.per_task(self, make, name, "encoder",
                                                                slots_bt, *args, **kw)
    norm = lambda **kw: layers.RMSNorm(cfg, **kw)
    h = sub(norm, "pre_attention_layer_norm", x_btd)
    h = task_routing.per_task_attention(
        self, lambda **kw: layers.Attention(cfg, **kw), "attention", "encoder", slots_bt,
        slots_bt, h, h, mask_bts, _layer_bias(self, bias_nts), self.deterministic)
    x_btd = x_btd + dropout(h, deterministic=self.deterministic)
    h = sub(norm, "pre_mlp_layer_norm", x_btd)
    h = sub(lambda **kw: layers.FeedForward(cfg, **kw), "mlp", h, self.deterministic,
            shared_kwargs=_lora_slots(cfg, slots_bt))
    x_btd = x_btd + dropout(h, deterministic=self.deterministic)
    x_btd = task_routing.adapt(self, slots_bt, x_btd)
    return constrain(x_btd, ("batch", "length", "embed"))


class DecoderLayer(nn.Module):
  config: T5Config
  deterministic: bool
  decode: bool = False

  @nn.compact
  def __call__(self, y_btd, encoded_bsd, self_mask_btt, cross_mask_bts, bias_ntt,
               cache_index=None, slots_bt=None, encoder_slots_bs=None):
    cfg = self.config
    dropout = nn.Dropout(cfg.dropout_rate)
    sub = lambda make, name, *args, **kw: task_routing.per_task(self, make, name, "decoder",
                                                                slots_bt, *args, **kw)
    norm = lambda **kw: layers.RMSNorm(cfg, **kw)
    attention = lambda role, name, kv_slots, *args, **kwargs: task_routing.per_task_attention(
        self, lambda **kw: layers.Attention(cfg, decode_role=role, **kw), name, "decoder",
        slots_bt, kv_slots, *args, self.deterministic, self.decode, **kwargs)
    h = sub(norm, "pre_self_attention_layer_norm", y_btd)
    h = attention("self", "self_attention", slots_bt, h, h, self_mask_btt,
                  _layer_bias(self, bias_ntt), cache_index=cache_index)
    y_btd = y_btd + dropout(h, deterministic=self.deterministic)
    h = sub(norm, "pre_cross_attention_layer_norm", y_btd)
    h = attention("cross", "encoder_decoder_attention", encoder_slots_bs,
                  h, encoded_bsd, cross_mask_bts, None)
    y_btd = y_btd + dropout(h, deterministic=self.deterministic)
    h = sub(norm, "pre_mlp_layer_norm", y_btd)
    h = sub(lambda **kw: layers.FeedForward(cfg, **kw), "mlp", h, self.deterministic,
            shared_kwargs=_lora_slots(cfg, slots_bt))
    y_btd = y_btd + dropout(h, deterministic=self.deterministic)
    y_btd = task_routing.adapt(self, slots_bt, y_btd)
    return constrain(y_btd, ("batch", "length", "embed"))


def _stack_bias(stack: nn.Module, buckets_ts):
  """What a stack hands its layers for the position bias: the bias [N, T, S] of its one
  table, or with a table per layer (UMT5) the buckets [T, S], for `_layer_bias`."""
  if stack.config.relative_attention_per_layer:
    return buckets_ts
  return layers.RelativePositionBias(stack.config, name="relpos_bias")(buckets_ts)


def _layer_bias(layer: nn.Module, bias_or_buckets):
  """A layer's position bias [N, T, S]: its own table's (UMT5) or its stack's."""
  if layer.config.relative_attention_per_layer:
    return layers.RelativePositionBias(layer.config, name="relpos_bias")(bias_or_buckets)
  return bias_or_buckets


class Encoder(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self, x_bsd, mask_bss, deterministic: bool, slots_bs=None):
    cfg = self.config
    s = x_bsd.shape[1]
    bias_nss = _stack_bias(self, layers.position_buckets(cfg, s, s, bidirectional=True))
    x_bsd = nn.Dropout(cfg.dropout_rate)(x_bsd, deterministic=deterministic)
    x_bsd = run_layers(self, EncoderLayer, cfg.num_encoder_layers, x_bsd,
                       (mask_bss, bias_nss, slots_bs), deterministic)
    x_bsd = layers.RMSNorm(cfg, name="encoder_norm")(x_bsd)
    return nn.Dropout(cfg.dropout_rate)(x_bsd, deterministic=deterministic)


class Decoder(nn.Module):
  """Decoder stack and output projection; in decode mode it keeps its position in
  the "cache" collection, created by one call over a full-length dummy input.
  With return_hidden it stops before the projection and returns (hidden [B, T, D]
  (T5 1.0's rescaling applied), kernel, "VD" or "DV": the kernel's layout), for
  fused_xent.py, which computes the loss without the [B, T, V] logits."""
  config: T5Config

  @nn.compact
  def __call__(self, y_btd, encoded_bsd, self_mask_btt, cross_mask_bts, embedding_vd,
               deterministic: bool, decode: bool = False, slots_bt=None,
               return_hidden: bool = False):
    cfg = self.config
    t = y_btd.shape[1]
    if decode and cfg.has_task_parameters:
      # Decoding keeps each row's task slot in the cache (beam search copies and
      # reorders it with the rows), set by the call that creates the cache.
      if slots_bt is None and not self.has_variable("cache", "task_slots"):
        raise ValueError(
            f"This model has per-task parameters (task_slots {list(cfg.task_slots)}); pass "
            "decoder_task_slots to the call that creates the decode cache.")
      first_slots_bt = slots_bt
      slots = self.variable("cache", "task_slots", lambda: first_slots_bt[:, 0])
      slots_bt = jnp.broadcast_to(slots.value[:, None], y_btd.shape[:2])
    cache_index = None
    if decode and self.has_variable("cache", "index"):
      index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
      cache_index = index.value
      max_length = self.get_variable("cache", "max_length_marker").shape[0]
      bias_ntt = _stack_bias(self, layers.position_buckets(cfg, t, max_length, False,
                                                           query_offset=cache_index))
      self_mask_btt = (jnp.arange(max_length) <= cache_index)[None, None, :]
      index.value = cache_index + t
    else:
      if decode:  # the call that creates the cache: remember its length
        self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
        self.variable("cache", "max_length_marker", lambda: jnp.zeros((t,), jnp.int8))
      bias_ntt = _stack_bias(self, layers.position_buckets(cfg, t, t, bidirectional=False))
      causal = causal_mask(t)
      self_mask_btt = causal if self_mask_btt is None else causal & self_mask_btt

    encoder_slots_bs = None
    routed_keys = cfg.peft_per_task and (cfg.has_lora("k") or cfg.has_lora("v"))
    routed_cross = cfg.is_task_specific("decoder", "encoder_decoder_attention") or routed_keys
    if routed_cross and not decode:
      encoder_slots_bs = task_routing.encoder_token_slots(cross_mask_bts, slots_bt)
    y_btd = nn.Dropout(cfg.dropout_rate)(y_btd, deterministic=deterministic)
    y_btd = run_layers(self, DecoderLayer, cfg.num_decoder_layers, y_btd,
                       (encoded_bsd, self_mask_btt, cross_mask_bts, bias_ntt, cache_index,
                        slots_bt, encoder_slots_bs),
                       deterministic, decode)
    y_btd = layers.RMSNorm(cfg, name="decoder_norm")(y_btd)
    y_btd = nn.Dropout(cfg.dropout_rate)(y_btd, deterministic=deterministic)

    if cfg.tie_word_embeddings:
      # Mesh TF rescales before the tied projection; Hugging Face does the same.
      y_btd = y_btd * (cfg.d_model**-0.5)
      kernel, layout = embedding_vd, "VD"
    else:
      kernel, layout = layers.param_with_axes(
          self, "logits_dense", nn.initializers.normal(cfg.d_model**-0.5),
          (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), jnp.dtype(cfg.param_dtype)), "DV"
    if return_hidden:
      # The kernel as stored (fp32): the fused loss casts it itself and returns its
      # gradient in fp32, with no low-precision copy of a [V, D] gradient.
      return y_btd, kernel, layout
    kernel = kernel.astype(cfg.dtype)
    if layout == "DV":
      logits_btv = layers.dense(self, "BTD,DV->BTV", y_btd, kernel, "logits_dense",
                                preferred_element_type=jnp.float32)
    elif (decode and devices.on_one_cpu_device()
          and layers.reads_out_in(y_btd.shape[0] * t, cfg.vocab_size)):
      # A tied kernel is [V, D], [out, in] already: no copy to prepare.
      logits_btv = layers.out_in_matmul(y_btd, kernel, preferred_element_type=jnp.float32)
    else:
      logits_btv = jnp.einsum("BTD,VD->BTV", y_btd, kernel, preferred_element_type=jnp.float32)
    return constrain(logits_btv, ("batch", "length", "vocab"))


class Transformer(nn.Module):
  """T5 encoder-decoder. `encode` and `decode` can be applied separately."""
  config: T5Config

  def setup(self):
    cfg = self.config
    self.embedding_vd = layers.param_with_axes(
        self, "token_embedder", nn.initializers.normal(1.0), (cfg.vocab_size, cfg.d_model),
        ("vocab", "embed"), jnp.dtype(cfg.param_dtype))
    self.prompts = peft.make_prompts(self) if cfg.prompt_length else []
    self.encoder = Encoder(cfg)
    self.decoder = Decoder(cfg)

  def _embed(self, tokens_bt):
    x_btd = jnp.take(self.embedding_vd, tokens_bt, axis=0).astype(self.config.dtype)
    return constrain(x_btd, ("batch", "length", "embed"))

  def _slots(self, slots_bt, tokens_bt, name: str, decode=False):
    """Task slots per token; required when the model has per-task parameters."""
    if not self.config.has_task_parameters:
      return None
    if slots_bt is None:
      if decode:  # later decode steps read the slots from the cache (see Decoder)
        return None
      if self.is_initializing():
        return jnp.zeros(tokens_bt.shape, jnp.int32)
      raise ValueError(
          f"This model has per-task parameters (task_slots {list(self.config.task_slots)}); "
          f"pass {name} (each token's slot index, config.slot_of_task(task)).")
    return jnp.broadcast_to(jnp.asarray(slots_bt, jnp.int32), tokens_bt.shape)

  def encode(self, encoder_input_tokens, encoder_segment_ids=None, enable_dropout=False,
             encoder_task_slots=None):
    """Returns the encoder output [B, S, D]. encoder_task_slots: [B, S] or [B, 1]
    slot indices (only for models with task slots)."""
    enc_seg = self._encoder_segment_ids(encoder_input_tokens, encoder_segment_ids)
    encoder_mask, _, _ = attention_masks(enc_seg, None)
    slots_bs = self._slots(encoder_task_slots, encoder_input_tokens, "encoder_task_slots")
    x_bsd = self._embed(encoder_input_tokens)
    if self.prompts:  # prompt tuning: P learned positions first (peft.py)
      x_bsd = peft.prepend_prompt(self.prompts, x_bsd, slots_bs)
      if slots_bs is not None:
        slots_bs = jnp.concatenate(
            [jnp.broadcast_to(slots_bs[:, :1], (slots_bs.shape[0], self.config.prompt_length)),
             slots_bs], axis=1)
    return self.encoder(x_bsd, encoder_mask, deterministic=not enable_dropout,
                        slots_bs=slots_bs)

  def _encoder_segment_ids(self, encoder_input_tokens, encoder_segment_ids):
    """Segment ids of the encoder's positions (the prompt's included)."""
    enc_seg = _segment_ids(encoder_input_tokens, encoder_segment_ids)
    if self.config.prompt_length:
      enc_seg = peft.prompt_segments(enc_seg, self.config.prompt_length)
    return enc_seg

  def decode(self, encoded, encoder_input_tokens, decoder_input_tokens,
             encoder_segment_ids=None, decoder_segment_ids=None, enable_dropout=False,
             decode=False, decoder_task_slots=None, return_hidden=False):
    """Returns fp32 logits [B, T, V] (return_hidden: the projection's inputs, see Decoder).

    With decode=True the first call (over a full-length dummy decoder input)
    creates the "cache" collection; each later call consumes one position (and
    reuses the task slots given to the first call).
    """
    enc_seg = self._encoder_segment_ids(encoder_input_tokens, encoder_segment_ids)
    if decode:
      decoder_segment_ids = None
    _, self_mask, cross_mask = attention_masks(enc_seg, decoder_segment_ids)
    slots_bt = self._slots(decoder_task_slots, decoder_input_tokens, "decoder_task_slots",
                           decode)
    return self.decoder(self._embed(decoder_input_tokens), encoded, self_mask, cross_mask,
                        self.embedding_vd, deterministic=not enable_dropout, decode=decode,
                        slots_bt=slots_bt, return_hidden=return_hidden)

  def __call__(self, encoder_input_tokens, decoder_input_tokens, encoder_segment_ids=None,
               decoder_segment_ids=None, enable_dropout=False, encoder_task_slots=None,
               decoder_task_slots=None, return_hidden=False):
    """Teacher-forced logits [B, T, V] (fp32), or with return_hidden the output
    projection's inputs (hidden [B, T, D], kernel, layout; see Decoder)."""
    encoded = self.encode(encoder_input_tokens, encoder_segment_ids, enable_dropout,
                          encoder_task_slots)
    return self.decode(encoded, encoder_input_tokens, decoder_input_tokens,
                       encoder_segment_ids, decoder_segment_ids, enable_dropout,
                       decoder_task_slots=decoder_task_slots, return_hidden=return_hidden)


def _segment_ids(tokens_bt, segment_ids_bt):
  """Without packing, every non-padding token is in segment 1."""
  if segment_ids_bt is not None:
    return segment_ids_bt
  return (tokens_bt > 0).astype(jnp.int32)
