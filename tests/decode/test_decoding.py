"""Decoding strategies: sampling, beam search, the generate entry point, sharded decoding,
and beam search against Hugging Face's. (Cached == uncached greedy is in test_model.py.)"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5jax.decode import beam_search, decoding
from t5jax.parallel import partitioning
from t5jax.decode.decoding import DecodeConfig, generate
from t5jax.model import config as model_config
from t5jax.model import t5

L = 12  # max decode length everywhere, so jitted decoders compile once per strategy
CFG = model_config.get_config("t5_1_1_tiny", dtype="float32", vocab_size=256, d_model=64,
                              d_kv=16, d_ff=128, num_heads=4, dropout_rate=0.0)
EOS_BOOST = 3.0


def _boost_eos(params):
  """A random model almost never emits EOS; a larger EOS output column makes rows end
  at different lengths, some not at all, as a trained model's would."""
  dec = dict(params["decoder"])
  dec["logits_dense"] = dec["logits_dense"].at[:, decoding.EOS_ID].multiply(EOS_BOOST)
  return {**params, "decoder": dec}


@pytest.fixture(scope="module")
def tiny():
  model = t5.Transformer(CFG)
  tokens = jnp.ones((1, 8), jnp.int32)
  boxed = model.init(jax.random.key(0), tokens, tokens)["params"]
  params = _boost_eos(nn.meta.unbox(boxed))
  rng = np.random.default_rng(0)
  enc = rng.integers(2, CFG.vocab_size, (8, 16)).astype(np.int32)
  enc[1, 9:] = 0
  enc[5, 4:] = 0
  greedy = generate(model, params, enc, max_decode_length=L)
  return dict(model=model, params=params, boxed=boxed, enc=enc, greedy=greedy)


def _ended(tokens_bl):
  return (np.asarray(tokens_bl) == decoding.EOS_ID).any(axis=1)


def _lengths(tokens_bl):
  """Tokens decoded per row: up to and including EOS, else all L."""
  t = np.asarray(tokens_bl)
  eos = t == decoding.EOS_ID
  return np.where(eos.any(axis=-1), eos.argmax(axis=-1) + 1, t.shape[-1])


@functools.partial(jax.jit, static_argnums=0)
def teacher_forced_logprob(model, params, enc, tokens_bl):
  """Sum of log p(token) over each row up to and including its first EOS."""
  tokens_bl = jnp.asarray(tokens_bl)
  dec_in = jnp.concatenate([jnp.zeros_like(tokens_bl[:, :1]), tokens_bl[:, :-1]], axis=1)
  logp_blv = jax.nn.log_softmax(model.apply({"params": params}, enc, dec_in))
  tok_bl = jnp.take_along_axis(logp_blv, tokens_bl[..., None], axis=-1)[..., 0]
  eos_bl = (tokens_bl == decoding.EOS_ID).astype(jnp.int32)
  keep_bl = (jnp.cumsum(eos_bl, axis=1) - eos_bl) == 0
  return jnp.sum(jnp.where(keep_bl, tok_bl, 0.0), axis=1)


def _padded_after_eos(tokens_bl):
  t = np.asarray(tokens_bl)
  eos = (t == decoding.EOS_ID).astype(int)
  return np.all(t[(np.cumsum(eos, axis=1) - eos) > 0] == 0)


# --- DecodeConfig ------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(method="topk"), "method='topk' is not one of"),
    (dict(temperature=-0.5), "temperature must be >= 0"),
    (dict(top_k=-1), "top_k must be >= 0"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
    (dict(method="beam", num_beams=0), "num_beams must be >= 1"),
    (dict(method="sample", return_all_beams=True), "return_all_beams=True needs method='beam'"),
])
def test_bad_decode_config_is_a_one_line_error(kwargs, message):
  with pytest.raises(ValueError, match=message) as err:
    DecodeConfig(**kwargs)
  assert "\n" not in str(err.value)


def test_too_many_beams_for_the_vocabulary_is_a_clear_error(tiny):
  with pytest.raises(ValueError, match="num_beams=200 needs a vocabulary of at least 400 tokens, got 256"):
    generate(tiny["model"], tiny["params"], tiny["enc"], max_decode_length=L,
             strategy=DecodeConfig("beam", num_beams=200))


# --- greedy and the shared output contract --------------------------------------------

def test_fixture_rows_end_at_different_lengths(tiny):
  ended = _ended(tiny["greedy"].tokens_bl)
  assert 2 <= ended.sum() < len(ended)  # some rows stop early, some run to L
  assert len(set(_lengths(tiny["greedy"].tokens_bl))) >= 3


@pytest.mark.parametrize("strategy", [
    DecodeConfig("greedy"),
    DecodeConfig("sample", temperature=1.0, seed=3),
    DecodeConfig("sample", temperature=0.7, top_k=20, top_p=0.9, seed=3),
    DecodeConfig("beam", num_beams=4, alpha=0.6),
], ids=["greedy", "sample", "sample_topk_topp", "beam"])
def test_logprob_is_the_models_log_likelihood_including_eos(tiny, strategy):
  out = generate(tiny["model"], tiny["params"], tiny["enc"], max_decode_length=L,
                 strategy=strategy)
  assert out.tokens_bl.shape == (8, L) and _padded_after_eos(out.tokens_bl)
  want = teacher_forced_logprob(tiny["model"], tiny["params"], tiny["enc"], out.tokens_bl)
  np.testing.assert_allclose(out.logprob_b, want, rtol=1e-5, atol=1e-4)
  if strategy.method != "beam":
    np.testing.assert_array_equal(out.score_b, out.logprob_b)


# --- sampling ----------------------------------------------------------------------

def _sample(tiny, **kwargs):
  return generate(tiny["model"], tiny["params"], tiny["enc"], max_decode_length=L,
                  strategy=DecodeConfig("sample", **kwargs))


def test_sampling_is_reproducible_and_seeds_differ(tiny):
  a = _sample(tiny, temperature=1.0, seed=1)
  b = _sample(tiny, temperature=1.0, seed=1)
  c = _sample(tiny, temperature=1.0, seed=2)
  np.testing.assert_array_equal(a.tokens_bl, b.tokens_bl)
  np.testing.assert_array_equal(a.logprob_b, b.logprob_b)
  assert not np.array_equal(a.tokens_bl, c.tokens_bl)
  assert not np.array_equal(a.tokens_bl, tiny["greedy"].tokens_bl)
  # An explicit key overrides the config's seed.
  d = generate(tiny["model"], tiny["params"], tiny["enc"], max_decode_length=L,
               strategy=DecodeConfig("sample", seed=2), rng=jax.random.key(1))
  np.testing.assert_array_equal(d.tokens_bl, a.tokens_bl)


@pytest.mark.parametrize("kwargs", [dict(top_k=1, temperature=1.5), dict(top_p=1e-6),
                                    dict(temperature=0.0, top_k=5)],
                         ids=["top_k_1", "tiny_top_p", "temperature_0"])
def test_degenerate_sampling_is_greedy(tiny, kwargs):
  out = _sample(tiny, seed=7, **kwargs)
  np.testing.assert_array_equal(out.tokens_bl, tiny["greedy"].tokens_bl)
  np.testing.assert_allclose(out.logprob_b, tiny["greedy"].logprob_b, rtol=1e-6)


def test_sample_logits_respects_top_k_and_top_p():
  logits_v = jnp.log(jnp.array([0.05, 0.4, 0.3, 0.15, 0.1]))
  logits_nv = jnp.tile(logits_v[None], (4000, 1))
  draw = lambda **kw: np.asarray(decoding.sample_logits(logits_nv, jax.random.key(0), **kw))
  top3 = draw(temperature=1.0, top_k=3, top_p=1.0)
  assert set(top3) == {1, 2, 3}
  # Renormalised over the top 3: 0.4 / 0.85 of the draws are token 1.
  assert abs((top3 == 1).mean() - 0.4 / 0.85) < 0.03
  # Nucleus 0.6: tokens 1 (0.4) and 2 (mass before it 0.4 < 0.6); token 3's is 0.7.
  assert set(draw(temperature=1.0, top_k=0, top_p=0.6)) == {1, 2}
  # top-k first, then top-p within it.
  assert set(draw(temperature=1.0, top_k=2, top_p=0.99)) == {1, 2}
  # A high temperature flattens: all five tokens appear.
  assert set(draw(temperature=5.0, top_k=0, top_p=1.0)) == {0, 1, 2, 3, 4}


# --- beam search -------------------------------------------------------------------

def _beam(tiny, **kwargs):
  return generate(tiny["model"], tiny["params"], tiny["enc"], max_decode_length=L,
                  strategy=DecodeConfig("beam", **kwargs))


def test_one_beam_is_greedy(tiny):
  out = _beam(tiny, num_beams=1, alpha=0.0)
  np.testing.assert_array_equal(out.tokens_bl, tiny["greedy"].tokens_bl)
  np.testing.assert_allclose(out.logprob_b, tiny["greedy"].logprob_b, rtol=1e-5)


def test_beam_search_scores_at_least_greedy(tiny):
  """With alpha=0 beams rank by log-likelihood. Not a theorem for beam search, but the
  expected outcome; rows where greedy never emitted EOS are left out, because beam
  search prefers a finished hypothesis to a truncated one."""
  out = _beam(tiny, num_beams=4, alpha=0.0)
  ended = _ended(tiny["greedy"].tokens_bl)
  assert ended.sum() >= 3
  assert np.all(out.logprob_b[ended] >= tiny["greedy"].logprob_b[ended] - 1e-5)
  assert np.any(out.logprob_b[ended] > tiny["greedy"].logprob_b[ended] + 1e-3)
  assert _ended(out.tokens_bl).sum() >= ended.sum()


def test_beams_are_sorted_and_length_penalised(tiny):
  alpha = 0.6
  out = _beam(tiny, num_beams=4, alpha=alpha, return_all_beams=True)
  assert out.beams_bkl.shape == (8, 4, L)
  np.testing.assert_array_equal(out.beams_bkl[:, 0], out.tokens_bl)
  score_bk = np.asarray(out.beam_score_bk)
  assert np.all(np.diff(score_bk, axis=1) <= 0)
  filled = score_bk > beam_search.NEG_INF / 2
  lengths_bk = _lengths(out.beams_bkl)
  want = np.asarray(out.beam_logprob_bk) / ((5.0 + lengths_bk) / 6.0) ** alpha
  np.testing.assert_allclose(score_bk[filled], want[filled], rtol=1e-5)
  flat = np.asarray(out.beams_bkl).reshape(-1, L)
  enc = np.repeat(tiny["enc"], 4, axis=0)
  want_lp = np.asarray(
      teacher_forced_logprob(tiny["model"], tiny["params"], enc, flat)).reshape(8, 4)
  np.testing.assert_allclose(np.asarray(out.beam_logprob_bk)[filled], want_lp[filled],
                             rtol=1e-5, atol=1e-4)
  # The best beam is the same whether the search stops for the best one or for all four.
  best_only = _beam(tiny, num_beams=4, alpha=alpha)
  np.testing.assert_array_equal(best_only.tokens_bl, out.tokens_bl)


def test_length_penalty_favours_longer_outputs(tiny):
  short = _beam(tiny, num_beams=4, alpha=0.0)
  long = _beam(tiny, num_beams=4, alpha=2.0)
  assert _lengths(long.tokens_bl).sum() > _lengths(short.tokens_bl).sum()


def test_brevity_penalty_is_t5s():
  np.testing.assert_allclose(beam_search.brevity_penalty(0.6, 7), (12 / 6) ** 0.6, rtol=1e-6)
  assert float(beam_search.brevity_penalty(0.0, 30)) == 1.0


# --- jit and sharding ----------------------------------------------------------------------

def test_sharded_decoding_matches_one_device(tiny):
  model, boxed = tiny["model"], tiny["boxed"]
  mesh = partitioning.make_mesh(partitioning.MeshConfig(data=2, fsdp=2, tensor=2))
  shardings = partitioning.logical_to_sharding(nn.get_partition_spec(boxed), mesh)
  params = jax.device_put(tiny["params"], shardings)
  enc = jax.device_put(tiny["enc"], partitioning.batch_sharding(mesh))
  beam = DecodeConfig("beam", num_beams=4, alpha=0.6)
  one_device_beam = _beam(tiny, num_beams=4, alpha=0.6)
  with partitioning.sharding_context(mesh):
    greedy = generate(model, params, enc, max_decode_length=L)
    beamed = generate(model, params, enc, max_decode_length=L, strategy=beam)
  assert len(params["encoder"]["layers_0"]["attention"]["query"].sharding.device_set) == 8
  np.testing.assert_array_equal(greedy.tokens_bl, tiny["greedy"].tokens_bl)
  np.testing.assert_array_equal(beamed.tokens_bl, one_device_beam.tokens_bl)
  np.testing.assert_allclose(beamed.score_b, one_device_beam.score_b, rtol=1e-4)


def test_generate_is_jittable(tiny):
  model, strategy = tiny["model"], DecodeConfig("beam", num_beams=4, alpha=0.6)
  jitted = jax.jit(lambda p, e: generate(model, p, e, max_decode_length=L, strategy=strategy))
  out = jitted(tiny["params"], tiny["enc"])
  np.testing.assert_array_equal(out.tokens_bl, _beam(tiny, num_beams=4, alpha=0.6).tokens_bl)


# --- Hugging Face ------------------------------------------------------------------

def test_beam_search_matches_hugging_face():
  """HF's length penalty is log p / len ** lp, T5's log p / ((5 + len) / 6) ** alpha, so
  only alpha = lp = 0 ranks alike; with it, HF's early_stopping=True gives the same
  best sequences and scores on this model as our stop-when-no-live-beam-can-win rule."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  interop = pytest.importorskip("t5jax.interop")
  torch.manual_seed(0)
  hf = transformers.T5ForConditionalGeneration(transformers.T5Config(
      vocab_size=CFG.vocab_size, d_model=CFG.d_model, d_kv=CFG.d_kv, d_ff=CFG.d_ff,
      num_heads=CFG.num_heads, num_layers=2, feed_forward_proj="gated-gelu",
      tie_word_embeddings=False, dropout_rate=0.0, decoder_start_token_id=0)).eval()
  with torch.no_grad():  # an untied output layer, with EOS boosted as in the fixture
    head = torch.randn_like(hf.shared.weight) * 0.3
    head[decoding.EOS_ID] *= 2.0
    hf.lm_head.weight = torch.nn.Parameter(head)
  cfg = interop.t5config_from_hf(hf.config.to_dict()).replace(dtype="float32")
  params = interop.params_from_hf_state_dict(
      {k: v.numpy() for k, v in hf.state_dict().items()}, cfg)
  model = t5.Transformer(cfg)
  enc = np.random.default_rng(1).integers(2, cfg.vocab_size, (8, 16)).astype(np.int32)
  enc[1, 7:] = 0

  def hf_generate(**kwargs):
    with torch.no_grad():
      out = hf.generate(input_ids=torch.from_numpy(enc).long(),
                        attention_mask=torch.from_numpy(enc > 0).long(), max_new_tokens=L,
                        do_sample=False, output_scores=True, return_dict_in_generate=True,
                        **kwargs)
    seqs = out.sequences[:, 1:].numpy()  # drop the start token
    seqs = np.pad(seqs, ((0, 0), (0, L - seqs.shape[1])))
    # HF pads finished beams with EOS; we pad with 0.
    eos = (seqs == decoding.EOS_ID).astype(int)
    return np.where(np.cumsum(eos, axis=1) - eos > 0, 0, seqs), out.get("sequences_scores")

  greedy = generate(model, params, enc, max_decode_length=L)
  hf_greedy, _ = hf_generate(num_beams=1)
  np.testing.assert_array_equal(greedy.tokens_bl, hf_greedy)

  ours = generate(model, params, enc, max_decode_length=L,
                  strategy=DecodeConfig("beam", num_beams=4, alpha=0.0))
  hf_tokens, hf_scores = hf_generate(num_beams=4, length_penalty=0.0, early_stopping=True,
                                     use_cache=False)
  assert 2 <= _ended(hf_tokens).sum()  # beams really finish, at different lengths
  assert len(set(_lengths(hf_tokens))) >= 3
  np.testing.assert_array_equal(ours.tokens_bl, hf_tokens)
  np.testing.assert_allclose(ours.logprob_b, hf_scores.numpy(), rtol=1e-5, atol=1e-4)
  assert not np.array_equal(ours.tokens_bl, greedy.tokens_bl)  # beam search did something


def test_prepared_weights_decode_the_same_tokens_from_out_in_kernels(tiny, monkeypatch):
  model, params, enc = tiny["model"], tiny["params"], tiny["enc"]
  # The 8 test devices: nothing to prepare. One CPU device: [out, in] copies.
  assert decoding.prepare_weights(model, params) is params
  monkeypatch.setattr(decoding.devices, "on_one_cpu_device", lambda: True)
  prepared = decoding.prepare_weights(model, params)
  assert isinstance(prepared, decoding.DecodeWeights)
  dec, copies = params["decoder"], prepared.layouts["decoder"]
  np.testing.assert_array_equal(copies["logits_dense"], np.asarray(dec["logits_dense"]).T)
  query_dnh = np.asarray(dec["layers_1"]["self_attention"]["query"])
  np.testing.assert_array_equal(copies["layers_1"]["self_attention"]["query"],
                                query_dnh.reshape(query_dnh.shape[0], -1).T)
  out_nhd = np.asarray(dec["layers_0"]["encoder_decoder_attention"]["out"])
  np.testing.assert_array_equal(copies["layers_0"]["encoder_decoder_attention"]["out"],
                                out_nhd.reshape(-1, out_nhd.shape[-1]).T)
  np.testing.assert_array_equal(copies["layers_0"]["mlp"]["wo"],
                                np.asarray(dec["layers_0"]["mlp"]["wo"]).T)
  # Cross-attention K/V are projected once per input: no copies.
  assert set(copies["layers_0"]["encoder_decoder_attention"]) == {"query", "out"}
  assert decoding.prepare_weights(model, prepared) is prepared
  # 8 rows greedy, 2 x 4 beams, 8 x 4 = 32 beams: every step from the copies.
  for rows, strategy in ((8, DecodeConfig("greedy")), (2, DecodeConfig("beam", num_beams=4)),
                         (8, DecodeConfig("beam", num_beams=4))):
    want = generate(model, params, enc[:rows], max_decode_length=L, strategy=strategy)
    got = generate(model, prepared, enc[:rows], max_decode_length=L, strategy=strategy)
    np.testing.assert_array_equal(got.tokens_bl, want.tokens_bl)
    np.testing.assert_allclose(got.logprob_b, want.logprob_b, rtol=1e-5, atol=1e-5)


def test_a_tied_output_kernel_is_read_vocabulary_major_on_one_cpu_device(monkeypatch):
  cfg = CFG.replace(tie_word_embeddings=True)
  model = t5.Transformer(cfg)
  tokens = jnp.ones((1, 8), jnp.int32)
  params = nn.meta.unbox(model.init(jax.random.key(1), tokens, tokens)["params"])
  enc = np.random.default_rng(1).integers(2, cfg.vocab_size, (4, 16)).astype(np.int32)

  def first_step(p):
    encoded = decoding.encode(model, p, enc)
    cache = decoding.init_cache(model, p, encoded, enc, L)
    return decoding.decode_step(model, p, cache, encoded, enc, jnp.zeros((4,), jnp.int32))[0]

  # The vocabulary-major product is the one behind an optimization barrier. (Fresh
  # lambdas: JAX caches traces by function.)
  vocab_major = lambda: "optimization_barrier" in str(
      jax.make_jaxpr(lambda p: first_step(p))(params))
  want = jax.jit(lambda p: first_step(p))(params)
  assert not vocab_major()
  monkeypatch.setattr(decoding.devices, "on_one_cpu_device", lambda: True)
  # The embedding is the [V, D] kernel: no copy of it, and plain params read it so.
  assert "logits_dense" not in decoding.prepare_weights(model, params).layouts["decoder"]
  assert vocab_major()
  np.testing.assert_allclose(jax.jit(lambda p: first_step(p))(params), want, rtol=1e-5,
                             atol=1e-5)
