"""Routing tokens through their own task copy: the block plan, equality with dense
selection (outputs and gradients), and the FLOPs it saves."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import synthetic
from t5jax.model import config as model_config
from t5jax.model import layers, t5, task_routing
from t5jax.model.task_routing import Adapter, select_by_slot

K = 3
CFG = model_config.get_config("t5_1_1_tiny", dtype="float32", vocab_size=512, dropout_rate=0.0,
                              task_slots=("a", "b", "c"), task_specific=("decoder.layer",),
                              adapter_dim=8)


@pytest.mark.parametrize("pattern", ["random", "one_slot", "slot_missing"])
def test_blocks_hold_every_token_once_in_a_block_of_its_slot(pattern):
  rng = np.random.default_rng(0)
  slots_bt = {"random": rng.integers(0, K, (5, 13)),
              "one_slot": np.full((5, 13), 2),
              "slot_missing": rng.integers(0, 2, (5, 13)) * 2}[pattern].astype(np.int32)
  blocks = jax.device_get(task_routing.plan_blocks(jnp.asarray(slots_bt), K))
  n, (j, c) = slots_bt.size, blocks.source_jc.shape
  assert j * c <= n + K * c  # padding: at most one partial block per slot
  source = blocks.source_jc.reshape(-1)
  placed = source[source < n]
  np.testing.assert_array_equal(np.sort(placed), np.arange(n))
  owner = np.repeat(blocks.owner_j, c)
  np.testing.assert_array_equal(owner[source < n], slots_bt.reshape(-1)[placed])
  np.testing.assert_array_equal(source[blocks.place_n], np.arange(n))
  x_btd = rng.normal(size=slots_bt.shape + (4,)).astype(np.float32)
  x_jcd = task_routing.dispatch(blocks, jnp.asarray(x_btd))
  np.testing.assert_array_equal(np.asarray(x_jcd)[source.reshape(j, c) == n], 0.0)
  back = task_routing.combine(blocks, x_jcd, slots_bt.shape)
  np.testing.assert_array_equal(np.asarray(back), x_btd)


class _Layer(nn.Module):
  """A norm, an MLP, a cross-attention and an adapter, each per task."""
  config: model_config.T5Config

  @nn.compact
  def __call__(self, x_btd, kv_bsd, mask_bts, slots_bt, kv_slots_bs):
    cfg = self.config
    h = task_routing.per_task(self, lambda **kw: layers.RMSNorm(cfg, **kw),
                              "pre_mlp_layer_norm", "decoder", slots_bt, x_btd)
    h = task_routing.per_task(self, lambda **kw: layers.FeedForward(cfg, **kw), "mlp",
                              "decoder", slots_bt, h, True)
    h = h + task_routing.per_task_attention(
        self, lambda **kw: layers.Attention(cfg, **kw), "encoder_decoder_attention", "decoder",
        slots_bt, kv_slots_bs, x_btd, kv_bsd, mask_bts, None, True)
    return task_routing.adapt(self, slots_bt, h)


def _dense(params, x_btd, kv_bsd, mask_bts, slots_bt):
  """What the layer computed before routing: every copy over the whole batch,
  each token keeping its slot's output."""
  def each(module, name, *args):
    return select_by_slot([module.apply({"params": params[f"{name}_task{k}"]}, *args)
                           for k in range(K)], slots_bt)
  h = each(layers.RMSNorm(CFG), "pre_mlp_layer_norm", x_btd)
  h = each(layers.FeedForward(CFG), "mlp", h, True)
  h = h + each(layers.Attention(CFG), "encoder_decoder_attention", x_btd, kv_bsd, mask_bts,
               None, True)
  return each(Adapter(CFG), "adapter", h)


@pytest.fixture(scope="module")
def layer_case():
  """Packed rows of two examples each, every example of one slot (slot 1 unused in
  the first two rows); copies perturbed apart."""
  rng = np.random.default_rng(1)
  b, t, s, d = 4, 9, 11, CFG.d_model
  seg_bt = (np.arange(t)[None] >= rng.integers(2, t - 2, (b, 1))).astype(np.int32) + 1
  seg_bs = (np.arange(s)[None] >= rng.integers(2, s - 2, (b, 1))).astype(np.int32) + 1
  slot_of_seg = rng.integers(0, K, (b, 3))
  slot_of_seg[:2] = np.where(slot_of_seg[:2] == 1, 0, slot_of_seg[:2])
  slots_bt = np.take_along_axis(slot_of_seg, seg_bt, 1).astype(np.int32)
  kv_slots_bs = np.take_along_axis(slot_of_seg, seg_bs, 1).astype(np.int32)
  mask_bts = seg_bt[:, :, None] == seg_bs[:, None, :]
  x_btd = rng.normal(size=(b, t, d)).astype(np.float32)
  kv_bsd = rng.normal(size=(b, s, d)).astype(np.float32)
  args = tuple(map(jnp.asarray, (x_btd, kv_bsd, mask_bts, slots_bt, kv_slots_bs)))
  params = nn.meta.unbox(_Layer(CFG).init(jax.random.key(0), *args)["params"])
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  params = jax.tree.unflatten(tree, [x + 0.3 * jax.random.normal(k, x.shape)
                                     for x, k in zip(leaves, keys)])
  return params, args


def test_routed_layer_equals_dense_selection_outputs_and_gradients(layer_case):
  params, (x, kv, mask, slots, kv_slots) = layer_case
  weights_btd = jnp.asarray(np.random.default_rng(3).normal(size=x.shape), jnp.float32)
  routed = jax.jit(lambda p: _Layer(CFG).apply({"params": p}, x, kv, mask, slots, kv_slots))
  dense = jax.jit(lambda p: _dense(p, x, kv, mask, slots))
  synthetic.assert_close(routed(params), dense(params))
  loss = lambda f: jax.jit(jax.grad(lambda p: jnp.sum(f(p) * weights_btd)))
  g_routed, g_dense = loss(routed)(params), loss(dense)(params)
  synthetic.assert_grads_close(g_routed, g_dense)
  # Slot 1's tokens are only in rows 2 and 3: its copies learn from them alone.
  assert float(jnp.abs(g_routed["mlp_task1"]["wo"]).sum()) > 0


def test_routed_soft_sharing_costs_about_one_copy():
  """XLA's FLOPs of the forward pass with 9 copies of the decoder layers stay
  within 15% of hard sharing's (dense selection cost about 9x the decoder)."""
  batch = synthetic.packed_batch(batch_size=8, length=32, num_tasks=9)
  slots = dict(encoder_task_slots=batch["encoder_task_ids"],
               decoder_task_slots=batch["decoder_task_ids"])
  hard = CFG.replace(task_slots=(), task_specific=(), adapter_dim=0)
  soft = hard.replace(task_slots=tuple("abcdefghi"), task_specific=("decoder.layer",))

  def flops(cfg, **kw):
    model = t5.Transformer(cfg)
    args = (batch["encoder_input_tokens"], batch["decoder_input_tokens"],
            batch["encoder_segment_ids"], batch["decoder_segment_ids"])
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), *args, **kw))
    fn = jax.jit(lambda p: model.apply(p, *args, **kw))
    return fn.lower(params).compile().cost_analysis()["flops"]
  assert flops(soft, **slots) / flops(hard) < 1.15
