"""The T5 model: published sizes, packing masks, decode cache, relative buckets."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import synthetic
import tiny
from t5jax.model import config as model_config
from t5jax.model import layers, t5
from t5jax.decode import decoding

# Published parameter counts (a tied matrix counted once); see DESIGN.md.
PUBLISHED = {
    "t5_1_0_small": 60_506_624,
    "t5_1_0_base": 222_903_552,
    "t5_1_1_small": 76_961_152,
    "t5_1_1_base": 247_577_856,
    "t5_1_1_large": 783_150_080,
}


def count_params(cfg):
  model = t5.Transformer(cfg)
  tokens = jnp.ones((1, 8), jnp.int32)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens, tokens))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_matches_published(name):
  assert count_params(model_config.get_config(name)) == PUBLISHED[name]


def test_the_demos_mini_size_is_tiny_twice_as_deep():
  tiny, mini = model_config.get_config("t5_1_0_tiny"), model_config.get_config("t5_1_0_mini")
  assert (mini.num_encoder_layers, mini.num_decoder_layers) == (4, 4)
  assert mini == dataclasses.replace(tiny, num_encoder_layers=4, num_decoder_layers=4)
  # Two more layers per stack: 2 x (attention + MLP + norm) + 2 x (self, cross, MLP, 3 norms).
  d, inner, ff = 128, 4 * 32, 512
  attention, mlp = 4 * d * inner, 2 * d * ff
  per_encoder, per_decoder = attention + mlp + 2 * d, 2 * attention + mlp + 3 * d
  assert count_params(mini) == count_params(tiny) + 2 * (per_encoder + per_decoder) == 5_950_464


def test_every_parameter_has_logical_axes():
  model = t5.Transformer(model_config.get_config("t5_1_1_tiny"))
  tokens = jnp.ones((1, 8), jnp.int32)
  boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens, tokens))["params"]
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
  for leaf in leaves:
    assert len(leaf.names) == leaf.value.ndim


def test_unknown_size_names_close_matches():
  with pytest.raises(ValueError, match="t5_1_1_base"):
    model_config.get_config("t5_1_1_bsae")


@pytest.mark.parametrize("name", ["geglu", "gated-laplace", "gated-relu-relu"])
def test_bad_feed_forward_is_rejected(name):
  with pytest.raises(ValueError, match=f"feed_forward='{name}' .*silu"):
    model_config.T5Config(feed_forward=name)


def _init(cfg, seed=0):
  return t5.Transformer(cfg), tiny.init_params(cfg, seed)


@pytest.mark.parametrize("size", ["t5_1_0_tiny", "t5_1_1_tiny"])
def test_packed_rows_compute_what_separate_examples_compute(size):
  """Segment masks keep packed examples from seeing each other."""
  cfg = model_config.get_config(size, dtype="float32", vocab_size=512)
  model, params = _init(cfg)
  batch = synthetic.packed_batch(batch_size=2, length=16, vocab=500)
  logits = model.apply({"params": params}, batch["encoder_input_tokens"],
                       batch["decoder_input_tokens"], batch["encoder_segment_ids"],
                       batch["decoder_segment_ids"])
  for row in range(2):
    for seg in (1, 2):
      single = synthetic.unpack_row(batch, row, seg)
      alone = model.apply({"params": params}, single["encoder_input_tokens"],
                          single["decoder_input_tokens"], single["encoder_segment_ids"],
                          single["decoder_segment_ids"])
      mask = batch["decoder_segment_ids"][row] == seg
      n = int(mask.sum())
      synthetic.assert_close(logits[row][mask], alone[0, :n], rtol=2e-5)


@pytest.mark.parametrize("size", ["t5_1_0_tiny", "t5_1_1_tiny"])
def test_cached_greedy_equals_uncached(size):
  # A decoder deeper than the encoder, as some checkpoints have.
  cfg = model_config.get_config(size, dtype="float32", vocab_size=512, num_decoder_layers=3)
  model, params = _init(cfg, seed=3)
  # At random init a tied model echoes its input token (pad) through the residual
  # stream forever; a zero pad embedding makes the outputs vary, as after training.
  params["token_embedder"] = params["token_embedder"].at[0].set(0.0)
  rng = np.random.default_rng(1)
  enc = rng.integers(2, 500, (4, 12)).astype(np.int32)
  enc[1, 7:] = 0
  cached, _ = decoding.greedy_decode(model, params, enc, 10)
  uncached = decoding.greedy_decode_uncached(model, params, enc, 10)
  np.testing.assert_array_equal(np.asarray(cached), np.asarray(uncached))
  assert len(np.unique(np.asarray(cached))) > 3  # not a degenerate constant output


def test_relative_position_buckets_match_hugging_face():
  torch = pytest.importorskip("torch")
  t5_hf = pytest.importorskip("transformers.models.t5.modeling_t5")
  q, k = 40, 300
  relative = torch.arange(k)[None, :] - torch.arange(q)[:, None]
  for bidirectional in (True, False):
    for buckets, distance in ((32, 128), (16, 64), (8, 20)):
      ref = t5_hf.T5Attention._relative_position_bucket(
          relative, bidirectional=bidirectional, num_buckets=buckets, max_distance=distance)
      ours = layers.relative_position_buckets(q, k, bidirectional, buckets, distance)
      np.testing.assert_array_equal(ours, ref.numpy())


@pytest.mark.parametrize("remat", ["none", "full"])
def test_scanned_layers_compute_what_unrolled_layers_compute(remat, monkeypatch):
  from t5jax.model import scan_params
  cfg = model_config.get_config("t5_1_1_tiny", dtype="float32", vocab_size=512,
                                num_decoder_layers=3)
  model, params = _init(cfg, seed=2)
  scan_cfg = cfg.replace(scan_layers=True, remat_policy=remat)
  scan_model = t5.Transformer(scan_cfg)
  tokens = jnp.ones((1, 8), jnp.int32)
  boxed = jax.eval_shape(lambda: scan_model.init(jax.random.key(0), tokens, tokens))["params"]
  q = boxed["encoder"]["layers"]["layer"]["attention"]["query"]
  assert q.names == ("layers", "embed", "heads", "kv") and q.value.shape[0] == 2
  stacked = scan_params.stack_layers(params, cfg)
  assert jax.tree.structure(stacked) == jax.tree.structure(nn.meta.unbox(boxed))
  batch = synthetic.packed_batch(batch_size=2, length=16, vocab=500)
  args = (batch["encoder_input_tokens"], batch["decoder_input_tokens"],
          batch["encoder_segment_ids"], batch["decoder_segment_ids"])
  synthetic.assert_close(scan_model.apply({"params": stacked}, *args),
                         model.apply({"params": params}, *args))
  # Gradients too (remat recomputes the forward pass inside the backward one).
  loss = lambda m, p: jnp.mean(m.apply({"params": p}, *args) ** 2)
  g_scan = scan_params.unstack_layers(jax.grad(lambda p: loss(scan_model, p))(stacked), cfg)
  g_unrolled = jax.grad(lambda p: loss(model, p))(params)
  synthetic.assert_grads_close(g_scan, g_unrolled)
  # Cached decoding through the scanned decoder gives the same tokens.
  enc = np.asarray(batch["encoder_input_tokens"])
  np.testing.assert_array_equal(decoding.greedy_decode(scan_model, stacked, enc, 8)[0],
                                decoding.greedy_decode(model, params, enc, 8)[0])
  if remat == "none":  # (remat changes nothing in decoding)
    # Beam search too: its cache's batch axis is 1 under the scanned "layers" axis.
    beams = lambda m, p: decoding.beam_decode(m, p, enc, 8, num_beams=3).seqs_bkl
    want_beams = beams(model, params)
    np.testing.assert_array_equal(beams(scan_model, stacked), want_beams)
    # Prepared weights: their stacked copies are sliced per layer like the params.
    monkeypatch.setattr(decoding.devices, "on_one_cpu_device", lambda: True)
    prepared = decoding.prepare_weights(scan_model, stacked)
    assert prepared.layouts["decoder"]["layers"]["layer"]["mlp"]["wo"].shape[0] == 3
    np.testing.assert_array_equal(beams(scan_model, prepared), want_beams)
  assert scan_params.unstack_layers(stacked, cfg).keys() == params.keys()
