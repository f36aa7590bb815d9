"""Parity with Hugging Face transformers: random HF T5 models of several shapes (T5 1.0,
1.1, UMT5's position bias per layer, ByT5's deep encoder over 384 byte ids), saved with
save_pretrained, must give the same logits, greedy and beam output and log-likelihoods in
t5jax, and survive the trip back to HF bit for bit."""
import copy
import json

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from t5jax.decode import decoding
from t5jax.interop import load_hf_dir, read_hf_state_dict, save_hf_dir
from t5jax.model import t5

LOGITS_ATOL = 1e-4
MAX_NEW_TOKENS = 10

# HF T5Config kwargs. Each case varies several things at once to keep the file fast.
CASES = {
    # T5 1.0's tied and scaled output, with a plain exact GELU MLP.
    "t5_1_0": dict(vocab_size=128, d_model=32, d_kv=8, d_ff=64, num_heads=4, num_layers=2,
                   feed_forward_proj="gelu"),
    # T5 1.1: gated GELU, untied and unscaled; d_kv * heads != d_model; deeper decoder;
    # few buckets and a short max distance, so the encoder's 24 tokens saturate them.
    "t5_1_1": dict(vocab_size=160, d_model=48, d_kv=16, d_ff=96, num_heads=4, num_layers=2,
                   num_decoder_layers=3, relative_attention_num_buckets=16,
                   relative_attention_max_distance=10, feed_forward_proj="gated-gelu",
                   tie_word_embeddings=False),
    # ReLU (T5 1.0) with 3 heads of 5, a shallower decoder, 8 buckets.
    "odd_heads": dict(vocab_size=96, d_model=24, d_kv=5, d_ff=40, num_heads=3, num_layers=3,
                      num_decoder_layers=1, relative_attention_num_buckets=8,
                      relative_attention_max_distance=20, feed_forward_proj="relu"),
    # What transformers 5.x saves for a fresh 1.1 model: lm_head tied to the embedding
    # but no output scaling (config: tie_word_embeddings=true, scale_decoder_outputs=false);
    # with UL2's gated SiLU.
    "tied_unscaled": dict(vocab_size=112, d_model=32, d_kv=16, d_ff=48, num_heads=2,
                          num_layers=1, num_decoder_layers=2, feed_forward_proj="gated-silu",
                          tie_word_embeddings=False),
    # UMT5: mT5's layers with a relative position bias in every self-attention.
    "umt5": dict(model_type="umt5", vocab_size=144, d_model=32, d_kv=8, d_ff=64, num_heads=4,
                 num_layers=2, num_decoder_layers=3, feed_forward_proj="gated-gelu",
                 tie_word_embeddings=False),
    # ByT5: 384 byte ids, an encoder three times the decoder's depth, ByT5Tokenizer.
    "byt5": dict(vocab_size=384, d_model=32, d_kv=8, d_ff=48, num_heads=2, num_layers=3,
                 num_decoder_layers=1, feed_forward_proj="gated-gelu",
                 tie_word_embeddings=False, tokenizer_class="ByT5Tokenizer"),
}
# Give these a separate random lm_head, as real 1.1, UMT5 and ByT5 checkpoints have.
UNTIE = {"t5_1_1", "umt5", "byt5"}


def _random_hf_model(case, seed=0):
  torch.manual_seed(seed)
  kwargs = dict(CASES[case])
  umt5 = kwargs.pop("model_type", "t5") == "umt5"
  config = (transformers.UMT5Config if umt5 else transformers.T5Config)(
      dropout_rate=0.0, decoder_start_token_id=0, **kwargs)
  model = (transformers.UMT5ForConditionalGeneration if umt5 else
           transformers.T5ForConditionalGeneration)(config).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "layer_norm" in name:  # HF initialises norms to 1, which would hide a mix-up
        p.uniform_(0.5, 1.5)
    # HF's unit-variance embedding dominates the residual stream, and a tied model then
    # greedily repeats one token; shrink it, and make EOS likelier so that some rows stop.
    model.shared.weight.mul_(0.1)
    model.shared.weight[decoding.EOS_ID].mul_(3.0)
    if case in UNTIE:
      model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.shared.weight) * 0.2)
      model.lm_head.weight[decoding.EOS_ID].mul_(3.0)
  return model


def _batch(vocab, rng, enc_len=24, dec_len=9):
  """Encoder tokens with padding; targets of different lengths ending in EOS, padded."""
  enc = np.zeros((3, enc_len), np.int64)
  tgt = np.zeros((3, dec_len), np.int64)
  for row, (n_enc, n_tgt) in enumerate([(enc_len, dec_len), (11, 5), (3, 1)]):
    enc[row, :n_enc] = rng.integers(2, vocab, n_enc)
    tgt[row, :n_tgt - 1] = rng.integers(2, vocab, n_tgt - 1)
    tgt[row, n_tgt - 1] = decoding.EOS_ID
  dec_in = np.concatenate([np.zeros((3, 1), np.int64), tgt[:, :-1]], axis=1)
  return enc, dec_in, tgt


def _build(case, hf_dir):
  """A saved HF model, the same model loaded into t5jax, and both models' outputs."""
  hf = _random_hf_model(case)
  hf.save_pretrained(hf_dir)
  cfg, params = load_hf_dir(hf_dir)
  cfg = cfg.replace(dtype="float32")
  enc, dec_in, tgt = _batch(cfg.vocab_size, np.random.default_rng(1))
  labels = np.where(tgt > 0, tgt, -100)
  with torch.no_grad():
    out = hf(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc > 0),
             decoder_input_ids=torch.tensor(dec_in), labels=torch.tensor(labels))
  model = t5.Transformer(cfg)
  ours = jax.jit(model.apply)({"params": params}, enc.astype(np.int32), dec_in.astype(np.int32))
  return dict(case=case, hf=hf, hf_dir=hf_dir, cfg=cfg, params=params, model=model, enc=enc,
              dec_in=dec_in, tgt=tgt, hf_logits=out.logits.numpy(), hf_loss=float(out.loss),
              logits=np.asarray(ours))


@pytest.fixture(scope="module")
def build(tmp_path_factory):
  """build(case) -> that case's models and outputs, made once per module."""
  built = {}

  def get(case):
    if case not in built:
      built[case] = _build(case, tmp_path_factory.mktemp(case))
    return built[case]
  return get


@pytest.fixture(params=sorted(CASES))
def pair(request, build):
  return build(request.param)


def test_config_says_tied_only_for_scaled_models(pair):
  hf_scaled = pair["hf"].config.scale_decoder_outputs
  assert pair["cfg"].tie_word_embeddings == hf_scaled == (pair["case"] in ("t5_1_0", "odd_heads"))
  emb = pair["params"]["token_embedder"]
  if pair["case"] in UNTIE:  # really untied on both sides
    assert pair["hf"].lm_head.weight.data_ptr() != pair["hf"].shared.weight.data_ptr()
    assert not np.allclose(pair["params"]["decoder"]["logits_dense"], emb.T)
  if pair["case"] == "tied_unscaled":  # HF ties lm_head; we hold an untied copy
    np.testing.assert_array_equal(pair["params"]["decoder"]["logits_dense"], emb.T)


def test_feed_forward_is_transformers_activation(pair):
  assert pair["cfg"].feed_forward == CASES[pair["case"]]["feed_forward_proj"]
  assert pair["cfg"].relative_attention_per_layer == (pair["case"] == "umt5")


def test_params_have_the_tree_and_shapes_init_makes(pair):
  tokens = np.ones((1, 4), np.int32)
  shapes = jax.eval_shape(lambda: pair["model"].init(jax.random.key(0), tokens, tokens))
  want = jax.tree.map(lambda x: (x.shape, np.dtype(x.dtype)), nn.meta.unbox(shapes["params"]))
  got = jax.tree.map(lambda x: (x.shape, x.dtype), pair["params"])
  assert got == want


def test_logits_match(pair):
  assert pair["logits"].shape == pair["hf_logits"].shape
  np.testing.assert_allclose(pair["logits"], pair["hf_logits"], atol=LOGITS_ATOL, rtol=0)
  # A real comparison: the logits are far larger than the tolerance.
  assert np.abs(pair["hf_logits"]).max() > 100 * LOGITS_ATOL


def test_log_likelihood_matches(pair):
  """Sum of teacher-forced log-probs of the target tokens including EOS, per example."""
  weights = pair["tgt"] > 0

  def log_likelihood(logits):
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    picked = np.take_along_axis(logp, pair["tgt"][..., None], -1)[..., 0]
    return (picked * weights).sum(-1)

  ours = log_likelihood(pair["logits"].astype(np.float64))
  theirs = log_likelihood(pair["hf_logits"].astype(np.float64))
  np.testing.assert_allclose(ours, theirs, rtol=1e-4)
  # HF's own loss (mean over target tokens) agrees with our sum.
  np.testing.assert_allclose(-ours.sum() / weights.sum(), pair["hf_loss"], rtol=1e-4)


def test_greedy_decode_matches_generate(pair):
  ours, our_scores = decoding.greedy_decode(pair["model"], pair["params"],
                                            pair["enc"].astype(np.int32),
                                            max_decode_length=MAX_NEW_TOKENS)
  with torch.no_grad():
    out = pair["hf"].generate(
        input_ids=torch.tensor(pair["enc"]), attention_mask=torch.tensor(pair["enc"] > 0),
        do_sample=False, num_beams=1, max_new_tokens=MAX_NEW_TOKENS, use_cache=False,
        output_scores=True, return_dict_in_generate=True)
    step_logps = pair["hf"].compute_transition_scores(
        out.sequences, out.scores, normalize_logits=True).numpy()
  theirs = out.sequences.numpy()
  assert (theirs[:, 0] == 0).all()  # HF's output starts with decoder_start_token_id
  theirs = theirs[:, 1:]
  n = theirs.shape[1]
  theirs = np.pad(theirs, ((0, 0), (0, MAX_NEW_TOKENS - n)))
  np.testing.assert_array_equal(np.asarray(ours), theirs)
  assert len(np.unique(theirs)) > 3  # not a degenerate repetition of one token
  # Our score is the log-probability of the sequence up to and including EOS.
  is_eos = theirs[:, :n] == decoding.EOS_ID
  kept = np.cumsum(is_eos, axis=1) - is_eos == 0
  np.testing.assert_allclose(np.asarray(our_scores), (step_logps * kept).sum(1), rtol=1e-4)


def test_hf_to_t5jax_to_hf_is_bit_exact(pair, tmp_path):
  save_hf_dir(pair["cfg"], pair["params"], tmp_path)
  source = load_file(pair["hf_dir"] / "model.safetensors")
  exported = load_file(tmp_path / "model.safetensors")
  added = set(exported) - set(source)
  # Only a tied-but-unscaled source lacks lm_head; the export spells it out.
  assert added == ({"lm_head.weight"} if pair["case"] == "tied_unscaled" else set())
  assert set(source) <= set(exported)
  for key in source:
    assert exported[key].dtype == source[key].dtype, key
    np.testing.assert_array_equal(exported[key], source[key], err_msg=key)
  if added:
    np.testing.assert_array_equal(exported["lm_head.weight"], source["shared.weight"])


def _hf_logits(model, pair):
  with torch.no_grad():
    return model(input_ids=torch.tensor(pair["enc"]), attention_mask=torch.tensor(pair["enc"] > 0),
                 decoder_input_ids=torch.tensor(pair["dec_in"])).logits.numpy()


def _from_pretrained(path):
  model, info = transformers.AutoModelForSeq2SeqLM.from_pretrained(
      path, output_loading_info=True)
  assert not any(info.values()), info  # no missing, unexpected or mismatched keys
  return model.eval()


def test_export_loads_in_transformers(pair, tmp_path):
  save_hf_dir(pair["cfg"], pair["params"], tmp_path)
  reloaded = _from_pretrained(tmp_path)
  assert type(reloaded) is type(pair["hf"])  # UMT5 comes back as UMT5
  assert reloaded.config.scale_decoder_outputs == pair["cfg"].tie_word_embeddings
  tied = reloaded.lm_head.weight.data_ptr() == reloaded.shared.weight.data_ptr()
  assert tied == (pair["case"] not in UNTIE)
  np.testing.assert_allclose(_hf_logits(reloaded, pair), pair["hf_logits"], atol=1e-6, rtol=0)


def test_sharded_export_loads_in_both(build, tmp_path):
  pair = build("t5_1_1")
  save_hf_dir(pair["cfg"], pair["params"], tmp_path, max_shard_bytes=60_000)
  index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
  shards = sorted(set(index["weight_map"].values()))
  assert len(shards) > 2 and not (tmp_path / "model.safetensors").exists()
  assert shards == sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
  np.testing.assert_allclose(_hf_logits(_from_pretrained(tmp_path), pair), pair["hf_logits"],
                             atol=1e-6, rtol=0)
  _, params = load_hf_dir(tmp_path)
  jax.tree.map(np.testing.assert_array_equal, params, pair["params"])


def test_pytorch_bin_loads_through_weights_only(build, tmp_path):
  pair = build("t5_1_0")
  # Old checkpoints store every alias of the embedding, and lm_head even when tied.
  state = {k: v.clone() for k, v in pair["hf"].state_dict().items()}
  state["encoder.embed_tokens.weight"] = state["shared.weight"].clone()
  state["lm_head.weight"] = state["shared.weight"].clone()
  torch.save(state, tmp_path / "pytorch_model.bin")
  (tmp_path / "config.json").write_text((pair["hf_dir"] / "config.json").read_text())
  _, params = load_hf_dir(tmp_path)
  jax.tree.map(np.testing.assert_array_equal, params, pair["params"])


def test_bfloat16_safetensors_load_as_float32(build, tmp_path):
  pair = build("t5_1_1")
  copy.deepcopy(pair["hf"]).to(torch.bfloat16).save_pretrained(tmp_path)
  state = read_hf_state_dict(tmp_path)
  assert state["shared.weight"].dtype.name == "bfloat16"
  cfg, params = load_hf_dir(tmp_path)
  emb = params["token_embedder"]
  assert emb.dtype == np.float32
  want = pair["params"]["token_embedder"]
  np.testing.assert_array_equal(emb, torch.tensor(want).bfloat16().float().numpy())


@pytest.mark.parametrize("case", ["umt5", "byt5"])
def test_beam_search_matches_generate(build, case):
  pair = build(case)
  strategy = decoding.DecodeConfig("beam", num_beams=3, alpha=0.0)
  ours = np.asarray(decoding.generate(pair["model"], pair["params"], pair["enc"].astype(np.int32),
                                      max_decode_length=MAX_NEW_TOKENS, strategy=strategy).tokens_bl)
  with torch.no_grad():
    theirs = pair["hf"].generate(
        input_ids=torch.tensor(pair["enc"]), attention_mask=torch.tensor(pair["enc"] > 0),
        do_sample=False, num_beams=3, length_penalty=0.0, early_stopping=True,
        max_new_tokens=MAX_NEW_TOKENS, use_cache=False).numpy()[:, 1:]
  theirs = np.pad(theirs, ((0, 0), (0, MAX_NEW_TOKENS - theirs.shape[1])))
  eos = (theirs == decoding.EOS_ID).astype(int)
  theirs = np.where(np.cumsum(eos, axis=1) - eos > 0, 0, theirs)  # HF pads beams with EOS
  np.testing.assert_array_equal(ours, theirs)
  assert len(np.unique(theirs)) > 3


@pytest.mark.parametrize("hf_kwargs", [
    dict(num_beams=1, no_repeat_ngram_size=2, repetition_penalty=1.5),
    dict(num_beams=3, no_repeat_ngram_size=2, length_penalty=0.0, early_stopping=True),
])
def test_repetition_guards_match_generate(build, hf_kwargs):
  """Same tokens as HF's no_repeat_ngram_size / repetition_penalty, on a model whose
  plain greedy output repeats tokens."""
  pair = build("t5_1_0")
  enc = pair["enc"].astype(np.int32)
  strategy = decoding.DecodeConfig(
      "beam" if hf_kwargs["num_beams"] > 1 else "greedy", num_beams=hf_kwargs["num_beams"],
      alpha=0.0, no_repeat_ngram_size=hf_kwargs["no_repeat_ngram_size"],
      repetition_penalty=hf_kwargs.get("repetition_penalty", 1.0))
  ours = np.asarray(decoding.generate(pair["model"], pair["params"], enc,
                                      max_decode_length=MAX_NEW_TOKENS, strategy=strategy).tokens_bl)
  with torch.no_grad():
    theirs = pair["hf"].generate(
        input_ids=torch.tensor(pair["enc"]), attention_mask=torch.tensor(pair["enc"] > 0),
        do_sample=False, max_new_tokens=MAX_NEW_TOKENS, use_cache=False, **hf_kwargs)
  theirs = theirs.numpy()[:, 1:]
  theirs = np.pad(theirs, ((0, 0), (0, MAX_NEW_TOKENS - theirs.shape[1])))
  eos = (theirs == decoding.EOS_ID).astype(int)
  theirs = np.where(np.cumsum(eos, axis=1) - eos > 0, 0, theirs)  # HF pads beams with EOS
  np.testing.assert_array_equal(ours, theirs)
  plain = np.asarray(decoding.greedy_decode(pair["model"], pair["params"], enc,
                                            max_decode_length=MAX_NEW_TOKENS)[0])
  assert not np.array_equal(ours, plain)  # the guard changed the output
