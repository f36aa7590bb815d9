"""T5 building blocks: RMS norm, attention (with a decode cache), feed-forward.

Attention projects queries, keys and values and keeps the decode cache here; the
softmax(Q K^T + bias) V itself runs in attention_kernels.py, which picks the kernel.

Every parameter is created with logical axis names and every key activation is
constrained with them; partitioning.py maps the names to mesh axes.
Shape letters: B batch, T query length, S key length, D d_model, N heads,
H head width (d_kv), F d_ff.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from t5jax.model import attention_kernels, peft
from t5jax.model.config import ACTIVATIONS, T5Config

constrain = nn.with_logical_constraint


def _normal(std: float):
  return nn.initializers.normal(stddev=std)


def param_with_axes(module: nn.Module, name: str, init, shape, axes, dtype):
  """Creates a parameter whose logical axis names travel with it."""
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


# Matmuls of this many rows (a decode step's batch x beams), bounds included, and at
# most OUT_IN_MAX_RESULT rows x outputs, read a kernel's [out, in] copy where the
# "decode_layouts" collection holds one (made by decoding.prepare_weights). One row
# runs as a matrix-vector product, fast as it is; past those sizes the transpose of
# the result costs what the matmul saves (2 cores: t5_1_1_small's 32k-vocabulary
# logits at 64 rows even, mT5's 250k at 32 rows 0.78x, at 8 rows 1.13x).
OUT_IN_ROWS = (2, 32)
OUT_IN_MAX_RESULT = 2**21


def reads_out_in(rows: int, outputs: int) -> bool:
  """Whether a matmul of `rows` rows and `outputs` outputs uses an [out, in] kernel."""
  return OUT_IN_ROWS[0] <= rows <= OUT_IN_ROWS[1] and rows * outputs <= OUT_IN_MAX_RESULT


def dense(module: nn.Module, spec: str, x, kernel, name: str, **kwargs):
  """jnp.einsum(spec, x, kernel), which contracts x's last axis with the kernel's
  first ([in, out...]), for the module's kernel `name`. Where reads_out_in and
  "decode_layouts" holds an [out, in] copy of that kernel, the same product computed
  from the copy (out_in_matmul)."""
  rows, outputs = int(np.prod(x.shape[:-1])), int(np.prod(kernel.shape[1:]))
  if reads_out_in(rows, outputs) and module.has_variable("decode_layouts", name):
    kernel_oi = module.get_variable("decode_layouts", name).astype(kernel.dtype)
    return out_in_matmul(x, kernel_oi, **kwargs).reshape(x.shape[:-1] + kernel.shape[1:])
  return jnp.einsum(spec, x, kernel, **kwargs)


def out_in_matmul(x_mi, kernel_oi, **kwargs):
  """x [..., in] times a kernel stored [out, in]: [..., out], computed as
  kernel [out, in] x x^T [in, rows] and transposed.

  On a CPU, a few rows times an [in, out] kernel ran far below the memory bandwidth
  (the matmul, we read, packs its right-hand operand at every call); the [out, in]
  kernel as the left operand is read as it lies. 2 cores: a chain
  of 48 distinct 2 MB matmuls 1.3x faster at 8 and 32 rows, t5_1_1_small's
  [32, 512] x [512, 32,128] output projection 13.2 -> 9.3 ms. The barrier keeps XLA
  from folding the transpose back into the matmul.
  """
  rows_i = x_mi.reshape(-1, x_mi.shape[-1])
  y_or = jnp.einsum("OI,RI->OR", kernel_oi, rows_i, **kwargs)
  y_or = jax.lax.optimization_barrier(y_or)
  return jnp.transpose(y_or).reshape(x_mi.shape[:-1] + (kernel_oi.shape[0],))


class RMSNorm(nn.Module):
  """T5 layer norm: scale only, no bias, no mean subtraction, computed in fp32."""
  config: T5Config

  @nn.compact
  def __call__(self, x_btd):
    cfg = self.config
    scale_d = param_with_axes(self, "scale", nn.initializers.ones, (x_btd.shape[-1],),
                              ("embed",), jnp.dtype(cfg.param_dtype))
    x32 = x_btd.astype(jnp.float32)
    variance = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = x32 * jax.lax.rsqrt(variance + cfg.layer_norm_epsilon)
    return (y * scale_d.astype(jnp.float32)).astype(cfg.dtype)


class FeedForward(nn.Module):
  """act(x wi) wo (T5 1.0: ReLU) or (act(x wi_0) * x wi_1) wo (T5 1.1: GELU, UL2: SiLU)."""
  config: T5Config

  @nn.compact
  def __call__(self, x_btd, deterministic: bool, slots_bt=None):
    """slots_bt: each token's task slot, for per-task LoRA (config.peft_per_task)."""
    cfg = self.config
    d, f = cfg.d_model, cfg.d_ff
    pdt = jnp.dtype(cfg.param_dtype)
    act = ACTIVATIONS[cfg.mlp_activation]

    def project(name, spec, x_bt_, kernel, in_axis, out_axis):
      y = dense(self, spec, x_bt_, kernel.astype(cfg.dtype), name)
      delta = peft.lora_delta(self, name, x_bt_, (in_axis,), kernel.shape[1:], (out_axis,),
                              deterministic, slots_bt)
      return y if delta is None else y + delta
    if cfg.gated_mlp:
      wi_0 = param_with_axes(self, "wi_0", _normal(d**-0.5), (d, f), ("embed", "mlp"), pdt)
      wi_1 = param_with_axes(self, "wi_1", _normal(d**-0.5), (d, f), ("embed", "mlp"), pdt)
      gate_btf = project("wi_0", "BTD,DF->BTF", x_btd, wi_0, "embed", "mlp")
      lin_btf = project("wi_1", "BTD,DF->BTF", x_btd, wi_1, "embed", "mlp")
      h_btf = act(gate_btf) * lin_btf
    else:
      wi = param_with_axes(self, "wi", _normal(d**-0.5), (d, f), ("embed", "mlp"), pdt)
      h_btf = act(project("wi", "BTD,DF->BTF", x_btd, wi, "embed", "mlp"))
    h_btf = constrain(h_btf, ("batch", "length", "mlp"))
    h_btf = nn.Dropout(cfg.dropout_rate)(h_btf, deterministic=deterministic)
    wo = param_with_axes(self, "wo", _normal(f**-0.5), (f, d), ("mlp", "embed"), pdt)
    return project("wo", "BTF,FD->BTD", h_btf, wo, "mlp", "embed")


class Attention(nn.Module):
  """Multi-head attention without 1/sqrt(H) scaling (folded into the query init).

  In decode mode the self-attention keys and values live in the "cache"
  collection, preallocated to the maximum decode length; cross-attention keys and
  values are projected from the encoder output once, when the cache is created.
  """
  config: T5Config
  decode_role: str = "none"  # "none", "self" (causal, cached) or "cross" (cached K/V)

  def _kernel(self, name, shape, axes, std):
    return param_with_axes(self, name, _normal(std), shape, axes,
                           jnp.dtype(self.config.param_dtype)).astype(self.config.dtype)

  @nn.compact
  def __call__(self, x_btd, kv_bsd, mask_bts, bias_nts, deterministic: bool,
               decode: bool = False, cache_index=None, slots_bt=None, kv_slots_bs=None):
    """Args:
      x_btd: queries' input.
      kv_bsd: keys' and values' input (ignored for cross-attention once cached).
      mask_bts: bool, True where a query may attend to a key (B or 1 leading).
      bias_nts: additive position bias or None.
      decode: read and write the "cache" collection.
      cache_index: scalar int, the position being decoded (self-attention).
      slots_bt, kv_slots_bs: the query and key tokens' task slots, for per-task LoRA
        (config.peft_per_task); a cached cross-attention takes each row's task.
    Returns:
      [B, T, D] attention output.
    """
    cfg = self.config
    d, n, h = cfg.d_model, cfg.num_heads, cfg.d_kv
    wq = self._kernel("query", (d, n, h), ("embed", "heads", "kv"), (d * h)**-0.5)
    wk = self._kernel("key", (d, n, h), ("embed", "heads", "kv"), d**-0.5)
    wv = self._kernel("value", (d, n, h), ("embed", "heads", "kv"), d**-0.5)
    wo = self._kernel("out", (n, h, d), ("heads", "kv", "embed"), (n * h)**-0.5)

    def lora(target, x_bt_, in_axes, out_shape, out_axes, slots):
      if (cfg.peft_per_task and slots is None and target in ("k", "v")
          and self.decode_role == "cross"):
        slots = peft.kv_slots(slots_bt, x_bt_.shape[0], x_bt_.shape[1])
      return peft.lora_delta(self, target, x_bt_, in_axes, out_shape, out_axes, deterministic,
                             slots)

    def project(target, spec, y_bsd, kernel, name, slots):
      out = dense(self, spec, y_bsd, kernel, name)
      delta = lora(target, y_bsd, ("embed",), (n, h), ("heads", "kv"), slots)
      return out if delta is None else out + delta
    q_btnh = project("q", "BTD,DNH->BTNH", x_btd, wq, "query", slots_bt)
    q_btnh = constrain(q_btnh, ("batch", "length", "heads", "kv"))
    project_k = lambda y: project("k", "BSD,DNH->BSNH", y, wk, "key", kv_slots_bs)
    project_v = lambda y: project("v", "BSD,DNH->BSNH", y, wv, "value", kv_slots_bs)

    if decode and self.decode_role == "cross":
      # The encoder output is fixed during decoding: project it once.
      # Cached K/V are kept in the layouts the per-head matmuls read as they are
      # (see attention_kernels.attend_cached): K as [B, N, H, S], V as [B, N, S, H].
      cached_k = self.variable("cache", "cross_key",
                               lambda: attention_kernels.keys_bnhs(project_k(kv_bsd)))
      cached_v = self.variable("cache", "cross_value",
                               lambda: attention_kernels.swap_length_heads(project_v(kv_bsd)))
      k_bnhs, v_bnsh = cached_k.value, cached_v.value
      # Beam search keeps one copy of an input's K/V for all its beams: rows
      # b*G .. b*G+G-1 of the queries attend as G more query positions of input b.
      groups = q_btnh.shape[0] // k_bnhs.shape[0]
      if groups > 1:
        q_btnh = q_btnh.reshape((k_bnhs.shape[0], groups * q_btnh.shape[1], n, h))
        if mask_bts.shape[0] == x_btd.shape[0]:
          mask_bts = mask_bts.reshape((k_bnhs.shape[0], -1, mask_bts.shape[-1]))
      out_btnh = attention_kernels.attend_cached(cfg, q_btnh, k_bnhs, v_bnsh, mask_bts,
                                                 bias_nts)
    elif decode and self.decode_role == "self":
      # kv_bsd holds the full-length dummy on the call that creates the cache.
      initialized = self.has_variable("cache", "self_key")
      b, s = kv_bsd.shape[0], kv_bsd.shape[1]
      cached_k = self.variable("cache", "self_key", jnp.zeros, (b, n, h, s), cfg.dtype)
      cached_v = self.variable("cache", "self_value", jnp.zeros, (b, n, s, h), cfg.dtype)
      if initialized:
        # The new position's K [B, N, H, 1] and V [B, N, 1, H]: transposes of one
        # position, not of the cache.
        k_new = attention_kernels.keys_bnhs(project_k(kv_bsd))
        v_new = attention_kernels.swap_length_heads(project_v(kv_bsd))
        cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k_new,
                                                      (0, 0, 0, cache_index))
        cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v_new,
                                                      (0, 0, cache_index, 0))
      out_btnh = attention_kernels.attend_cached(cfg, q_btnh, cached_k.value, cached_v.value,
                                                 mask_bts, bias_nts)
    else:
      k_bsnh, v_bsnh = project_k(kv_bsd), project_v(kv_bsd)
      k_bsnh = constrain(k_bsnh, ("batch", "length", "heads", "kv"))
      v_bsnh = constrain(v_bsnh, ("batch", "length", "heads", "kv"))
      out_btnh = attention_kernels.attend(cfg, q_btnh, k_bsnh, v_bsnh, mask_bts, bias_nts,
                                          attention_dropout_rng(self, cfg, deterministic))
    out_btnh = out_btnh.reshape(x_btd.shape[:2] + (n, h))  # undoes the beam grouping
    out_btnh = constrain(out_btnh, ("batch", "length", "heads", "kv"))
    # One [B, T, N*H] x [N*H, D] matmul: contracting (N, H) as two axes let XLA pick a
    # layout that transposed the weight at every decode step.
    out_btk = out_btnh.reshape(x_btd.shape[:2] + (n * h,))
    out_btd = dense(self, "BTK,KD->BTD", out_btk, wo.reshape(n * h, d), "out")
    delta = lora("o", out_btnh, ("heads", "kv"), (d,), ("embed",), slots_bt)
    return out_btd if delta is None else out_btd + delta


def attention_dropout_rng(module: nn.Module, cfg: T5Config, deterministic: bool):
  """The key for attention-weight dropout, or None where there is none."""
  if deterministic or cfg.dropout_rate == 0:
    return None
  return module.make_rng("dropout")


@functools.lru_cache(maxsize=64)
def relative_position_buckets(query_length: int, key_length: int, bidirectional: bool,
                              num_buckets: int, max_distance: int) -> np.ndarray:
  """T5's bucketing of (key position - query position), as an int32 [T, S] table.

  Computed in numpy float32 the way Mesh TF and Hugging Face compute it, so that
  the buckets match theirs exactly; shapes are static, so this costs nothing at
  run time.
  """
  relative = np.arange(key_length)[None, :] - np.arange(query_length)[:, None]
  buckets = np.zeros_like(relative)
  if bidirectional:
    num_buckets //= 2
    buckets += (relative > 0).astype(relative.dtype) * num_buckets
    distance = np.abs(relative)
  else:
    distance = -np.minimum(relative, 0)
  max_exact = num_buckets // 2
  is_small = distance < max_exact
  with np.errstate(divide="ignore"):
    log_ratio = np.log(distance.astype(np.float32) / np.float32(max_exact))
  large = max_exact + (log_ratio / np.float32(np.log(max_distance / max_exact)) *
                       np.float32(num_buckets - max_exact))
  large = np.minimum(np.where(is_small, 0, large).astype(np.int64), num_buckets - 1)
  return (buckets + np.where(is_small, distance, large)).astype(np.int32)


def position_buckets(cfg: T5Config, query_length: int, key_length: int, bidirectional: bool,
                     query_offset=None):
  """The [T, S] int32 buckets of (key - query position); `query_offset` selects the rows of
  the queries being decoded (positions offset.. of a key_length-long cache)."""
  if query_offset is None:
    return jnp.asarray(relative_position_buckets(
        query_length, key_length, bidirectional, cfg.relative_attention_num_buckets,
        cfg.relative_attention_max_distance))
  full_ss = relative_position_buckets(
      key_length, key_length, bidirectional, cfg.relative_attention_num_buckets,
      cfg.relative_attention_max_distance)
  return jax.lax.dynamic_slice_in_dim(jnp.asarray(full_ss), query_offset, query_length, axis=0)


class RelativePositionBias(nn.Module):
  """Learned per-head bias over relative-position buckets: one per stack, shared by its
  layers (T5, mT5), or one in every layer's self-attention (UMT5,
  T5Config.relative_attention_per_layer)."""
  config: T5Config

  @nn.compact
  def __call__(self, buckets_ts):
    """Returns the [N, T, S] bias of [T, S] buckets (`position_buckets`)."""
    cfg = self.config
    table_kn = param_with_axes(
        self, "rel_embedding", _normal(cfg.d_model**-0.5),
        (cfg.relative_attention_num_buckets, cfg.num_heads), ("relpos_buckets", "heads"),
        jnp.dtype(cfg.param_dtype))
    bias_tsn = jnp.take(table_kn, buckets_ts, axis=0)
    return jnp.transpose(bias_tsn, (2, 0, 1)).astype(cfg.dtype)
