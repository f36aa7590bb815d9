"""Per-task parameters inside a shared model: soft-shared sub-modules and adapters.

Every token carries the index of its task slot (T5Config.task_slots), so one packed
row can mix tasks. A task-specific sub-module has one copy per slot, and each
token goes through its own slot's copy only:

- the tokens are sorted by slot and cut into blocks of C tokens, each block owned
  by one slot (a slot's last block is padded), so there are at most N/C + K
  blocks for N tokens and K slots;
- block j runs with the weights of its owner, gathered into a [J, ...] stack
  (a gather of weights, not of activations), as one batched matmul;
- the outputs go back to the tokens' places.

The FLOPs are those of one copy over the N tokens plus at most K padded blocks;
C is chosen so that the padding is about 1/8 of N (block_size). Attention's
projections are routed this way, and its softmax runs once over the whole
batch: attention never crosses examples (packing masks it to the token's own
example, whose tokens share a slot), so each token gets exactly what its task's
copy computes alone, and its gradient reaches only that copy.

The copies are separate parameters rather than one stacked array, so that
per-parameter optimizer statistics (Adafactor's factored moments, its update
clipping and parameter scaling) never couple two tasks. Initialisation and
cached decoding of a task-specific attention run every copy over the whole
batch and keep each token's own (select_by_slot): initialisation must create
every copy, and each copy keeps its own decode cache.
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5jax.model import attention_kernels, layers
from t5jax.model.config import T5Config
# The block plumbing lives in slot_blocks (LoRA routes with it too); re-exported here.
from t5jax.model.slot_blocks import (  # noqa: F401
    COPY_SUFFIX, PADDING_SHARE, Blocks, block_size, combine, copies_by_block, copy_name,
    dispatch, plan_blocks, select_by_slot)

constrain = nn.with_logical_constraint


def _routed(parent: nn.Module, make: Callable[..., nn.Module], name: str, slots_bt,
            x_btd, *args):
  """A position-wise sub-module (norm, MLP, adapter) through each token's own copy."""
  blocks = plan_blocks(slots_bt, len(parent.config.task_slots))
  params_j = copies_by_block(parent, name, blocks.owner_j)
  module = make(parent=None)
  num_blocks = blocks.owner_j.shape[0]
  rngs_j = (jax.random.split(parent.make_rng("dropout"), num_blocks)
            if parent.has_rng("dropout") else None)

  def one_block(params, x_cd, rng):
    rngs = None if rng is None else {"dropout": rng}
    return module.apply({"params": params}, x_cd[None], *args, rngs=rngs)[0]
  y_jcd = jax.vmap(one_block)(params_j, dispatch(blocks, x_btd), rngs_j)
  return combine(blocks, y_jcd, x_btd.shape[:2])


def per_task(parent: nn.Module, make: Callable[..., nn.Module], name: str, stack: str,
             slots_bt, *args, shared_kwargs: dict | None = None):
  """Applies position-wise sub-module `name` (built by make(name=...)) to args,
  through each token's own slot copy when the config makes it task-specific.

  Must be called from `parent`'s compact method. shared_kwargs go to the shared
  module's call only (per-task LoRA's slots; a task-specific copy has no LoRA). The
  shared copy, named `name`, is
  created at initialisation only: it is the anchor of the soft-sharing penalty
  (and what checkpoints without task slots hold), not part of the forward pass.
  """
  cfg: T5Config = parent.config
  if not cfg.is_task_specific(stack, name):
    return make(name=name)(*args, **(shared_kwargs or {}))
  if not parent.is_initializing():
    return _routed(parent, make, name, slots_bt, *args)
  make(name=name)(*args)
  outputs = [make(name=copy_name(name, k))(*args) for k in range(len(cfg.task_slots))]
  return select_by_slot(outputs, slots_bt)


def per_task_attention(parent: nn.Module, make: Callable[..., nn.Module], name: str,
                       stack: str, slots_bt, kv_slots_bs, x_btd, kv_bsd, mask_bts, bias_nts,
                       deterministic: bool, decode: bool = False, cache_index=None):
  """per_task for an attention sub-module (layers.Attention's arguments): queries
  are routed by the query tokens' slots, keys and values by kv_slots_bs (the key
  tokens' slots; the encoder's for cross-attention)."""
  cfg: T5Config = parent.config
  args = (x_btd, kv_bsd, mask_bts, bias_nts, deterministic, decode, cache_index)
  if not cfg.is_task_specific(stack, name):
    lora_slots = ({"slots_bt": slots_bt, "kv_slots_bs": kv_slots_bs} if cfg.peft_per_task
                  else {})
    return make(name=name)(*args, **lora_slots)
  if not (parent.is_initializing() or decode):
    return _routed_attention(parent, name, slots_bt, kv_slots_bs, *args[:5])
  if parent.is_initializing():
    make(name=name)(*args)
  outputs = [make(name=copy_name(name, k))(*args) for k in range(len(cfg.task_slots))]
  return select_by_slot(outputs, slots_bt)


def _routed_attention(parent: nn.Module, name: str, slots_bt, kv_slots_bs, x_btd, kv_bsd,
                      mask_bts, bias_nts, deterministic: bool):
  """layers.Attention with each token projected by its own slot's kernels."""
  cfg: T5Config = parent.config
  num_slots = len(cfg.task_slots)
  q_blocks = plan_blocks(slots_bt, num_slots)
  kv_blocks = q_blocks if kv_bsd is x_btd else plan_blocks(kv_slots_bs, num_slots)
  w = copies_by_block(parent, name, q_blocks.owner_j, cfg.dtype)
  x_jcd = dispatch(q_blocks, x_btd)
  if kv_blocks is q_blocks:
    kv_jcd, w_kv = x_jcd, w
  else:
    kv_jcd = dispatch(kv_blocks, kv_bsd)
    w_kv = copies_by_block(parent, name, kv_blocks.owner_j, cfg.dtype)
  axes = ("batch", "length", "heads", "kv")

  def project(blocks, x_jcd, w_jdnh, length_shape):
    y = combine(blocks, jnp.einsum("JCD,JDNH->JCNH", x_jcd, w_jdnh), length_shape)
    return constrain(y, axes)
  q_btnh = project(q_blocks, x_jcd, w["query"], x_btd.shape[:2])
  k_bsnh = project(kv_blocks, kv_jcd, w_kv["key"], kv_bsd.shape[:2])
  v_bsnh = project(kv_blocks, kv_jcd, w_kv["value"], kv_bsd.shape[:2])
  out_btnh = attention_kernels.attend(cfg, q_btnh, k_bsnh, v_bsnh, mask_bts, bias_nts,
                                      layers.attention_dropout_rng(parent, cfg, deterministic))
  out_btnh = constrain(out_btnh, axes)
  # (N, H) contracted as one N*H axis, as layers.Attention does.
  out_jcnh, w_out_jnhd = dispatch(q_blocks, out_btnh), w["out"]
  out_jcd = jnp.einsum("JCK,JKD->JCD", out_jcnh.reshape(out_jcnh.shape[:2] + (-1,)),
                       w_out_jnhd.reshape((w_out_jnhd.shape[0], -1, w_out_jnhd.shape[-1])))
  return combine(q_blocks, out_jcd, x_btd.shape[:2])


def encoder_token_slots(cross_mask_bts, slots_bt):
  """The slot of each encoder token: that of the decoder tokens of its example
  (0 where no decoder token attends to it, which then does not matter)."""
  return jnp.max(jnp.where(cross_mask_bts, slots_bt[:, :, None], 0), axis=1)


class Adapter(nn.Module):
  """Bottleneck adapter x -> x + up(relu(down(x))), the identity at initialisation
  (up starts at zero)."""
  config: T5Config

  @nn.compact
  def __call__(self, x_btd):
    cfg = self.config
    d, r = cfg.d_model, cfg.adapter_dim
    pdt = jnp.dtype(cfg.param_dtype)
    down = layers.param_with_axes(self, "down", nn.initializers.normal(d**-0.5), (d, r),
                           ("embed", "adapter"), pdt)
    up = layers.param_with_axes(self, "up", nn.initializers.zeros, (r, d), ("adapter", "embed"), pdt)
    h_btr = nn.relu(jnp.einsum("BTD,DR->BTR", x_btd, down.astype(cfg.dtype)))
    return x_btd + jnp.einsum("BTR,RD->BTD", h_btr, up.astype(cfg.dtype))


def adapt(parent: nn.Module, slots_bt, x_btd):
  """Each token through its slot's adapter (no-op when adapter_dim is 0)."""
  cfg: T5Config = parent.config
  if not cfg.adapter_dim:
    return x_btd
  make = lambda **kw: Adapter(cfg, **kw)
  if not parent.is_initializing():
    return _routed(parent, make, "adapter", slots_bt, x_btd)
  outputs = [make(name=copy_name("adapter", k))(x_btd) for k in range(len(cfg.task_slots))]
  return select_by_slot(outputs, slots_bt)
