"""Attention kernels: softmax(Q K^T + bias, masked) V by the fastest way that applies.

`attend` picks one (`select`): jax.nn.dot_product_attention's fused cuDNN or XLA
implementation, our einsums in blocks of queries (`attend_in_query_blocks`), one input row
at a time on a single CPU device (`attend_row_by_row`), or all at once. `attend_cached`
reads a decode cache in the layouts the per-head matmuls read as they lie. layers.Attention
projects, caches and calls these; none of them holds parameters.
Shape letters: B batch, T query length, S key length, N heads, H head width (d_kv).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5jax.model import devices
from t5jax.model.config import T5Config

# attend() takes one input row at a time (see attend_row_by_row) on a single CPU
# device, unless config.attention_row_by_row is False, once a row's scores have at
# least this many query-key pairs per head.
ROW_BY_ROW_MIN_SCORES = 128 * 128


def select(cfg: T5Config, with_dropout: bool) -> str:
  """The attention implementation attend() runs: "einsum" (our einsums), or
  jax.nn.dot_product_attention's "xla" or "cudnn" (fused) implementation.

  "auto" picks cuDNN on a GPU for half-precision activations and head widths the
  kernel takes, else the einsums; attention dropout (which the fused function
  lacks) always runs the einsums.
  """
  if with_dropout and cfg.dropout_rate > 0:
    return "einsum"
  if cfg.attention_impl != "auto":
    return cfg.attention_impl
  fits = cfg.dtype in ("bfloat16", "float16") and cfg.d_kv % 8 == 0 and cfg.d_kv <= 128
  return "cudnn" if jax.default_backend() == "gpu" and fits else "einsum"


def attend(cfg: T5Config, q_btnh, k_bsnh, v_bsnh, mask_bts, bias_nts, dropout_rng=None):
  """softmax(Q K^T + bias, masked) V per head, without 1/sqrt(H) scaling.

  Args:
    q_btnh, k_bsnh, v_bsnh: projected queries, keys and values.
    mask_bts: bool, True where a query may attend to a key (B or 1 leading, T may be 1).
    bias_nts: additive position bias or None.
    dropout_rng: key for dropout on the attention weights (training), or None.
  Returns:
    [B, T, N, H] attention output.
  """
  kernel = select(cfg, dropout_rng is not None)
  if kernel != "einsum":
    bias = None if bias_nts is None else bias_nts[None]
    try:
      return jax.nn.dot_product_attention(q_btnh, k_bsnh, v_bsnh, bias, mask_bts[:, None],
                                          scale=1.0, implementation=kernel)
    except (ValueError, NotImplementedError):
      # cuDNN rejects this shape or build (checked while tracing): "auto" means
      # the fused kernel only where it applies; an explicit choice must fail.
      if cfg.attention_impl != "auto":
        raise
  block = cfg.attention_query_block
  if block and q_btnh.shape[1] > block:
    return attend_in_query_blocks(cfg, q_btnh, k_bsnh, v_bsnh, mask_bts, bias_nts,
                                  dropout_rng, block)
  return attend_einsum(cfg, q_btnh, k_bsnh, v_bsnh, mask_bts, bias_nts, dropout_rng)


def attend_einsum(cfg: T5Config, q_btnh, k_bsnh, v_bsnh, mask_bts, bias_nts, dropout_rng):
  """attend() by our einsums over all queries: row by row where `runs_row_by_row`, else
  the whole batch at once."""
  if runs_row_by_row(cfg, q_btnh, k_bsnh, dropout_rng):
    return attend_row_by_row(cfg, q_btnh, k_bsnh, v_bsnh, mask_bts, bias_nts)
  logits_bnts = jnp.einsum("BTNH,BSNH->BNTS", q_btnh, k_bsnh)
  weights_bnts = _attention_weights(cfg, logits_bnts, mask_bts, bias_nts)
  if dropout_rng is not None:
    keep = 1.0 - cfg.dropout_rate
    kept_bnts = jax.random.bernoulli(dropout_rng, keep, weights_bnts.shape)
    weights_bnts = jnp.where(kept_bnts, weights_bnts / keep, 0).astype(weights_bnts.dtype)
  return jnp.einsum("BNTS,BSNH->BTNH", weights_bnts, v_bsnh)


def runs_row_by_row(cfg: T5Config, q_btnh, k_bsnh, dropout_rng) -> bool:
  """Whether attend_einsum() runs row by row: only on one CPU device (a loop over a
  sharded batch axis would gather it), without dropout, for long rows."""
  return (cfg.attention_row_by_row and dropout_rng is None and q_btnh.shape[0] > 1
          and q_btnh.shape[1] * k_bsnh.shape[1] >= ROW_BY_ROW_MIN_SCORES
          and devices.on_one_cpu_device())


def attend_row_by_row(cfg: T5Config, q_btnh, k_bsnh, v_bsnh, mask_bts, bias_nts):
  """attend_einsum()'s result, one input row (all heads) at a time, heads-major.

  A row's [N, T, S] scores (6 MB for 6 heads over 512 tokens) stay in the CPU's
  cache between the scores matmul, the softmax and the values matmul, where the
  whole batch's (48 MB at batch 8) went to memory and back at each of them; and
  with the heads leading, each head's two matmuls are plain [T, H] x [H, S] and
  [T, S] x [S, H] ones. On 2 CPU cores one 512-token attention layer over a batch of
  8 ran 1.45-1.71x faster, its forward and backward 1.11x, a 2-layer encoder
  1.06-1.10x (benchmarks/attention_rows.py).
  """
  per_row = {"q": q_btnh, "k": k_bsnh, "v": v_bsnh}
  if mask_bts.shape[0] != 1:  # else one mask for every row
    per_row["mask"] = mask_bts

  def one_row(xs):
    q_nth = jnp.transpose(xs["q"], (1, 0, 2))
    k_nhs = jnp.transpose(xs["k"], (1, 2, 0))
    v_nsh = jnp.transpose(xs["v"], (1, 0, 2))
    mask_1ts = xs["mask"][None] if "mask" in xs else mask_bts
    logits_1nts = jnp.einsum("NTH,NHS->NTS", q_nth, k_nhs)[None]
    weights_nts = _attention_weights(cfg, logits_1nts, mask_1ts, bias_nts)[0]
    return jnp.transpose(jnp.einsum("NTS,NSH->NTH", weights_nts, v_nsh), (1, 0, 2))

  return jax.lax.map(one_row, per_row)


def attend_in_query_blocks(cfg: T5Config, q_btnh, k_bsnh, v_bsnh, mask_bts, bias_nts,
                           dropout_rng, block: int):
  """attend() one block of `block` queries at a time, each block rematerialised.

  The [B, N, T, S] scores and weights exist one [B, N, block, S] slice at a time,
  in the forward and, because each block is under jax.checkpoint, in the backward
  too: the price is computing each block's scores once more in the backward.
  Softmax is per query, so the result is the unblocked one. The last block is
  padded with masked queries that are dropped.
  """
  b, t, n, h = q_btnh.shape
  blocks = -(-t // block)
  pad = blocks * block - t
  split = lambda x_t, axis: jnp.moveaxis(
      x_t.reshape(x_t.shape[:axis] + (blocks, block) + x_t.shape[axis + 1:]), axis, 0)
  q_jbcnh = split(jnp.pad(q_btnh, ((0, 0), (0, pad), (0, 0), (0, 0))), 1)
  per_block = {"q": q_jbcnh, "index": jnp.arange(blocks)}
  if mask_bts.shape[1] != 1:  # one row per query (causal or packed); else shared by all
    per_block["mask"] = split(jnp.pad(mask_bts, ((0, 0), (0, pad), (0, 0))), 1)
  if bias_nts is not None:
    per_block["bias"] = split(jnp.pad(bias_nts, ((0, 0), (0, pad), (0, 0))), 1)

  @jax.checkpoint
  def one_block(xs):
    rng = None if dropout_rng is None else jax.random.fold_in(dropout_rng, xs["index"])
    return attend_einsum(cfg, xs["q"], k_bsnh, v_bsnh, xs.get("mask", mask_bts),
                         xs.get("bias"), rng)

  out_jbcnh = jax.lax.map(one_block, per_block)
  return jnp.moveaxis(out_jbcnh, 0, 1).reshape(b, blocks * block, n, h)[:, :t]


def attend_cached(cfg: T5Config, q_btnh, k_bnhs, v_bnsh, mask_bts, bias_nts):
  """attend() over a decode cache: keys as [B, N, H, S], values as [B, N, S, H].

  Per (batch, head), the two einsums are then plain [T, H] x [H, S] and
  [T, S] x [S, H] matmuls that read the cache as it lies, with the output kept
  heads-major until the end. On CPU this ran beam search's grouped cross-attention
  (4 queries per input) 2.9-3.9x faster than keys as [B, N, S, H] with a [B, T, N, H]
  output (XLA transposed or repacked every head's keys each step); one query per
  row ran at about the same speed or faster. The fused kernels take [B, S, N, H], so
  they get transposed copies.
  """
  k_bnhs = nn.with_logical_constraint(k_bnhs, ("batch", "heads", "kv", "length"))
  v_bnsh = nn.with_logical_constraint(v_bnsh, ("batch", "heads", "length", "kv"))
  if select(cfg, with_dropout=False) != "einsum":
    return attend(cfg, q_btnh, jnp.transpose(k_bnhs, (0, 3, 1, 2)),
                  swap_length_heads(v_bnsh), mask_bts, bias_nts)
  logits_bnts = jnp.einsum("BNTH,BNHS->BNTS", swap_length_heads(q_btnh), k_bnhs)
  weights_bnts = _attention_weights(cfg, logits_bnts, mask_bts, bias_nts)
  return swap_length_heads(jnp.einsum("BNTS,BNSH->BNTH", weights_bnts, v_bnsh))


def swap_length_heads(x):
  """[B, S, N, H] <-> [B, N, S, H] (its own inverse)."""
  return jnp.transpose(x, (0, 2, 1, 3))


def keys_bnhs(k_bsnh):
  """Keys [B, S, N, H] as the decode cache holds them, [B, N, H, S]."""
  return jnp.transpose(k_bsnh, (0, 2, 3, 1))


def _attention_weights(cfg: T5Config, logits_bnts, mask_bts, bias_nts):
  """softmax over keys of the fp32 logits plus the position bias, masked."""
  logits_bnts = logits_bnts.astype(jnp.float32)
  if bias_nts is not None:
    logits_bnts = logits_bnts + bias_nts[None].astype(jnp.float32)
  logits_bnts = jnp.where(mask_bts[:, None], logits_bnts, jnp.finfo(jnp.float32).min)
  return jax.nn.softmax(logits_bnts, axis=-1).astype(cfg.dtype)
