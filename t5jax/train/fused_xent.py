"""Fused, blockwise cross-entropy: the output projection and the loss together,
without the [B, T, V] fp32 logits or their gradient.

The decoder's hidden states [B, T, D] go through the output projection in blocks
of target positions (all rows of the batch at once, so the batch keeps its
sharding). For each block the logits are made, reduced to the per-token terms
losses.token_terms computes today (loss with z-loss and label smoothing, the
z-loss part, correct, log Z), and, when differentiating, turned straight into
their gradient and multiplied back through the projection. So one block of
logits [B, K, V] exists at a time, and the projection costs the same three
matmuls as the unfused step.

Why the gradient is made in the forward pass: the loss is sum(scale * loss_bt),
a scalar whose per-token weights are known in the forward pass, so d loss /
d logits of a block is known there too (up to the scalar cotangent, applied in
the backward pass). Recomputing the logits in the backward pass instead would
add a fourth N x D x V matmul (+33% of the projection's FLOPs, 80% of a tiny
model's step).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5jax.train import losses
from t5jax.parallel import partitioning


@dataclasses.dataclass(frozen=True)
class _Spec:
  layout: str  # the kernel's axes: "VD" (tied embedding) or "DV" (T5 1.1 lm head)
  z_loss: float
  label_smoothing: float
  block_length: int  # target positions per block


def _blocks(x_bt, block_length: int):
  """[B, T, ...] -> [T / K, B, K, ...], T padded with zeros to a multiple of K."""
  b, t = x_bt.shape[:2]
  pad = -t % block_length
  x_bt = jnp.pad(x_bt, [(0, 0), (0, pad)] + [(0, 0)] * (x_bt.ndim - 2))
  x = x_bt.reshape((b, (t + pad) // block_length, block_length) + x_bt.shape[2:])
  return jnp.swapaxes(x, 0, 1)


def _unblock(x_nbk, length: int):
  """[N, B, K, ...] -> [B, T, ...] (drops the padding)."""
  x = jnp.swapaxes(x_nbk, 0, 1)
  return x.reshape((x.shape[0], -1) + x.shape[3:])[:, :length]


def _block_logits(hidden_bkd, kernel, spec: _Spec):
  logits_bkv = jnp.einsum(f"BKD,{spec.layout}->BKV", hidden_bkd, kernel,
                          preferred_element_type=jnp.float32)
  return nn.with_logical_constraint(logits_bkv, ("batch", "length", "vocab"))


def _forward(hidden_btd, kernel, targets_bt, scale_bt, spec: _Spec, with_grads: bool):
  """Scans the blocks. Returns the per-token terms [B, T] and, with_grads, the
  gradients of sum(scale * loss) w.r.t. hidden and kernel."""
  length = hidden_btd.shape[1]
  xs = tuple(_blocks(x, spec.block_length) for x in (hidden_btd, targets_bt, scale_bt))
  # Matmuls in the activations' dtype; the kernel's gradient accumulates in fp32 and
  # is returned in the kernel's own dtype (fp32 parameters: no bf16 round trip).
  param_kernel, kernel = kernel, kernel.astype(hidden_btd.dtype)

  def block(grad_kernel, xs):
    hidden_bkd, targets_bk, scale_bk = xs
    logits_bkv = _block_logits(hidden_bkd, kernel, spec)
    loss_bk, z_bk, correct_bk, log_z_bk = losses.token_terms(
        logits_bkv, targets_bk, spec.z_loss, spec.label_smoothing)
    terms = (loss_bk, z_bk, correct_bk)
    if not with_grads:
      return grad_kernel, terms
    dlogits_bkv = _dlogits(logits_bkv, log_z_bk, targets_bk, scale_bk, spec)
    dlogits_bkv = dlogits_bkv.astype(hidden_bkd.dtype)
    grad_hidden_bkd = jnp.einsum(f"BKV,{spec.layout}->BKD", dlogits_bkv, kernel,
                                 preferred_element_type=jnp.float32)
    grad_kernel = grad_kernel + jnp.einsum(f"BKV,BKD->{spec.layout}", dlogits_bkv,
                                           hidden_bkd, preferred_element_type=jnp.float32)
    return grad_kernel, terms + (grad_hidden_bkd.astype(hidden_bkd.dtype),)

  init = jnp.zeros(kernel.shape, jnp.float32) if with_grads else None
  grad_kernel, per_block = jax.lax.scan(block, init, xs)
  per_token = tuple(_unblock(x, length) for x in per_block)
  if not with_grads:
    return per_token, None
  return per_token[:3], (per_token[3], grad_kernel.astype(param_kernel.dtype))


def _dlogits(logits_bkv, log_z_bk, targets_bk, scale_bk, spec: _Spec):
  """d (scale * loss) / d logits, in one elementwise pass over the block.

  loss = (1 + z log Z) log Z - (confidence - low) logit_target - low sum_v logit_v
  (z = z_loss; without smoothing confidence = 1, low = 0), so
  d loss / d logit_v = (1 + 2 z log Z) softmax_v - (confidence - low) [v = target] - low.
  """
  vocab = logits_bkv.shape[-1]
  confidence, low = ((1.0, 0.0) if spec.label_smoothing == 0 else
                     losses.smoothed_target(spec.label_smoothing, vocab))
  probs_bkv = jnp.exp(logits_bkv - log_z_bk[..., None])
  is_target_bkv = jax.lax.broadcasted_iota(jnp.int32, logits_bkv.shape, 2) == targets_bk[..., None]
  softmax_scale_bk = 1.0 + 2.0 * spec.z_loss * log_z_bk
  d_bkv = (softmax_scale_bk[..., None] * probs_bkv - low
           - jnp.where(is_target_bkv, confidence - low, 0.0))
  return scale_bk[..., None] * d_bkv


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _fused(hidden_btd, kernel, targets_bt, scale_bt, spec: _Spec):
  (loss_bt, z_bt, correct_bt), _ = _forward(hidden_btd, kernel, targets_bt, scale_bt, spec,
                                            with_grads=False)
  return jnp.sum(loss_bt * scale_bt), (loss_bt, z_bt, correct_bt)


def _fused_fwd(hidden_btd, kernel, targets_bt, scale_bt, spec: _Spec):
  (loss_bt, z_bt, correct_bt), grads = _forward(hidden_btd, kernel, targets_bt, scale_bt,
                                                spec, with_grads=True)
  return (jnp.sum(loss_bt * scale_bt), (loss_bt, z_bt, correct_bt)), (grads, loss_bt)


def _fused_bwd(spec: _Spec, residuals, cotangents):
  # Only the scalar loss is differentiable; fused_loss_and_stats stops the
  # gradient of the per-token terms, so their cotangents are zero.
  (grad_hidden_btd, grad_kernel), loss_bt = residuals
  g = cotangents[0]
  return ((g * grad_hidden_btd).astype(grad_hidden_btd.dtype),
          (g * grad_kernel).astype(grad_kernel.dtype), None, g * loss_bt)


_fused.defvjp(_fused_fwd, _fused_bwd)


def block_length(batch: int, length: int, block_tokens: int) -> int:
  """Target positions per block, so that a block holds about `block_tokens` tokens
  per device: the rows are those of one shard of the batch under the current mesh
  (jax.set_mesh; partitioning.sharding_context), and the blocks are made equal so
  that the last one is padded least."""
  mesh = jax.sharding.get_abstract_mesh()
  shards = 1 if mesh.empty else math.prod(
      mesh.shape.get(axis, 1) for axis in partitioning.BATCH_MESH_AXES)
  rows = max(1, batch // shards)
  positions = max(1, min(length, block_tokens // rows))
  blocks = -(-length // positions)
  return -(-length // blocks)


def fused_loss_and_stats(hidden_btd, kernel, layout: str, batch, scale_bt, num_tasks: int,
                         cfg: losses.LossConfig):
  """losses.loss_and_stats from the output projection's inputs instead of its logits.

  Args:
    hidden_btd: the decoder's output [B, T, D] (Transformer(..., return_hidden=True)).
    kernel: the output projection as stored (its parameter dtype), [V, D] (layout "VD")
      or [D, V] ("DV"); the matmuls run in hidden_btd's dtype.
    cfg: LossConfig; fused_block_tokens sets the block (see block_length).
  Returns:
    (loss, stats) as losses.loss_and_stats; only the loss is differentiable.
  """
  spec_length = block_length(hidden_btd.shape[0], hidden_btd.shape[1], cfg.fused_block_tokens)
  spec = _Spec(layout, float(cfg.z_loss), float(cfg.label_smoothing), spec_length)
  loss, terms = _fused(hidden_btd, kernel, batch["decoder_target_tokens"], scale_bt, spec)
  loss_bt, z_bt, correct_bt = jax.lax.stop_gradient(terms)
  return loss, losses.per_task_stats(loss_bt, z_bt, correct_bt, batch, scale_bt, num_tasks)
