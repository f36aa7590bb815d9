"""attention_query_block: attention computed a block of queries at a time (each block
rematerialised) gives the unblocked result and gradients, with per-block dropout."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import synthetic
import tiny
from t5jax.model import config as model_config
from t5jax.model import attention_kernels, devices, t5

CFG = model_config.get_config("t5_1_1_tiny", dtype="float32", vocab_size=512, dropout_rate=0.0,
                              num_encoder_layers=1, num_decoder_layers=1, attention_impl="einsum")


def _qkv(b=2, t=10, s=12, n=3, h=5, seed=0):
  keys = jax.random.split(jax.random.key(seed), 4)
  q, k, v = (jax.random.normal(keys[i], shape) for i, shape in
             enumerate([(b, t, n, h), (b, s, n, h), (b, s, n, h)]))
  bias_nts = jax.random.normal(keys[3], (n, t, s))
  return q, k, v, bias_nts


@pytest.mark.parametrize("mask_kind", ["per_query", "shared"])
def test_blocks_equal_the_unblocked_attention_and_its_gradients(mask_kind):
  q, k, v, bias_nts = _qkv()
  b, t, s = q.shape[0], q.shape[1], k.shape[1]
  if mask_kind == "per_query":  # causal-like and a padded key: rows differ
    mask_bts = (jnp.arange(s)[None, None, :] <= jnp.arange(t)[None, :, None] + 2)
    mask_bts = jnp.broadcast_to(mask_bts, (b, t, s)).at[1, :, -1].set(False)
  else:  # one row for all queries (an encoder padding mask)
    mask_bts = jnp.ones((b, 1, s), bool).at[0, 0, -3:].set(False)
  probe_btnh = jax.random.normal(jax.random.key(9), q.shape)

  def run(block):
    cfg = CFG.replace(attention_query_block=block)
    f = lambda q, k, v, bias: jnp.sum(
        attention_kernels.attend(cfg, q, k, v, mask_bts, bias) * probe_btnh)
    out = jax.jit(lambda *a: attention_kernels.attend(cfg, *a))(q, k, v, mask_bts, bias_nts)
    return out, jax.jit(jax.grad(f, argnums=(0, 1, 2, 3)))(q, k, v, bias_nts)

  want, want_grads = run(0)
  for block in (4, 5):  # 10 queries: 3 blocks with 2 padded queries, and 2 exact blocks
    got, got_grads = run(block)
    synthetic.assert_close(got, want)
    for g, w in zip(got_grads, want_grads):
      synthetic.assert_close(g, w)


def test_dropout_in_blocks_drops_at_the_rate_with_a_fresh_mask_per_block():
  # Zero queries give uniform weights 1/S and identity values make the output the
  # weights themselves, so the dropped weights show as zeros in the output.
  b, t, s, n = 2, 64, 32, 2
  q = jnp.zeros((b, t, n, s))
  k = jnp.zeros((b, s, n, s))
  v = jnp.broadcast_to(jnp.eye(s)[None, :, None, :], (b, s, n, s))
  cfg = CFG.replace(attention_query_block=16, dropout_rate=0.25)
  out_btnh = attention_kernels.attend(cfg, q, k, v, jnp.ones((b, 1, s), bool), None,
                                      dropout_rng=jax.random.key(3))
  kept = np.asarray(out_btnh) > 0
  assert abs(1.0 - kept.mean() - 0.25) < 0.02
  np.testing.assert_allclose(np.asarray(out_btnh)[kept], 1.0 / (s * 0.75), rtol=1e-6)
  blocks = kept.reshape(b, 4, 16, n, s)
  assert not (blocks[:, 0] == blocks[:, 1]).all()  # not one mask repeated per block


@pytest.fixture(scope="module")
def params():
  return tiny.init_params(CFG)


def test_the_model_with_query_blocks_equals_the_model_without(params):
  batch = synthetic.packed_batch(batch_size=4, length=16)
  logits_and_grads = lambda block: synthetic.logits_and_grads(
      t5.Transformer(CFG.replace(attention_query_block=block)), params, batch, 512)
  (want, g_want), (got, g_got) = logits_and_grads(0), logits_and_grads(6)
  synthetic.assert_close(got, want)
  synthetic.assert_grads_close(g_got, g_want)


def test_the_model_trains_with_query_blocks_and_dropout(params):
  batch = synthetic.packed_batch(batch_size=2, length=16, seed=2)
  args = (batch["encoder_input_tokens"], batch["decoder_input_tokens"],
          batch["encoder_segment_ids"], batch["decoder_segment_ids"])
  model = t5.Transformer(CFG.replace(attention_query_block=8, dropout_rate=0.1))
  loss = lambda p, rng: jnp.mean(model.apply({"params": p}, *args, enable_dropout=True,
                                             rngs={"dropout": rng}) ** 2)
  loss_and_grads = jax.jit(jax.value_and_grad(loss))
  values = [loss_and_grads(params, jax.random.key(i)) for i in (0, 1)]
  assert all(np.isfinite(float(value)) for value, _ in values)
  assert float(values[0][0]) != float(values[1][0])  # dropout took effect


def test_a_negative_query_block_is_refused():
  with pytest.raises(ValueError, match="attention_query_block=-1 must be >= 0"):
    CFG.replace(attention_query_block=-1)


@pytest.mark.parametrize("mask_kind", ["per_query", "shared"])
@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no_bias"])
def test_row_by_row_equals_the_batched_attention_and_its_gradients(mask_kind, with_bias):
  q, k, v, bias_nts = _qkv(b=3)
  bias_nts = bias_nts if with_bias else None
  b, t, s = q.shape[0], q.shape[1], k.shape[1]
  if mask_kind == "per_query":
    mask_bts = jnp.broadcast_to(jnp.arange(s)[None, None, :] <= jnp.arange(t)[None, :, None] + 2,
                                (b, t, s)).at[1, :, -1].set(False)
  else:
    mask_bts = jnp.ones((1, 1, s), bool).at[0, 0, -3:].set(False)
  probe_btnh = jax.random.normal(jax.random.key(9), q.shape)

  def run(attend):
    f = lambda q, k, v: jnp.sum(attend(CFG, q, k, v, mask_bts, bias_nts) * probe_btnh)
    out = jax.jit(lambda *a: attend(CFG, *a, mask_bts, bias_nts))(q, k, v)
    return out, jax.jit(jax.grad(f, argnums=(0, 1, 2)))(q, k, v)

  batched = lambda cfg, *a: attention_kernels.attend_einsum(cfg, *a, None)  # 8 test devices
  assert not attention_kernels.runs_row_by_row(CFG, q, k, None)
  want, want_grads = run(batched)
  got, got_grads = run(attention_kernels.attend_row_by_row)
  synthetic.assert_close(got, want)
  for g, w in zip(got_grads, want_grads):
    synthetic.assert_close(g, w)


def test_row_by_row_runs_only_on_one_cpu_device_for_long_rows_without_dropout(monkeypatch):
  q, k, _, _ = _qkv(b=2, t=128, s=128)
  row_by_row = attention_kernels.runs_row_by_row
  monkeypatch.setattr(devices, "on_one_cpu_device", lambda: True)
  assert row_by_row(CFG, q, k, None)
  assert not row_by_row(CFG.replace(attention_row_by_row=False), q, k, None)
  assert not row_by_row(CFG, q[:, :64], k, None)  # 64 x 128 scores per head
  assert not row_by_row(CFG, q[:1], k[:1], None)  # one row: nothing to split
  assert not row_by_row(CFG, q, k, jax.random.key(0))  # dropout: batched
  monkeypatch.setattr(devices, "on_one_cpu_device", lambda: False)
  assert not row_by_row(CFG, q, k, None)


def test_the_model_row_by_row_equals_the_model_batched(params, monkeypatch):
  batch = synthetic.packed_batch(batch_size=4, length=16)
  want, g_want = synthetic.logits_and_grads(t5.Transformer(CFG), params, batch, 512)
  monkeypatch.setattr(devices, "on_one_cpu_device", lambda: True)
  monkeypatch.setattr(attention_kernels, "ROW_BY_ROW_MIN_SCORES", 1)
  got, g_got = synthetic.logits_and_grads(t5.Transformer(CFG), params, batch, 512)
  synthetic.assert_close(got, want)
  synthetic.assert_grads_close(g_got, g_want)
