"""Hugging Face T5 `config.json` ⇄ T5Config.

Reads the configs of T5 1.0, T5 1.1, Flan-T5, mT5, ByT5 (a T5 config whose tokenizer is
ByT5Tokenizer) and UMT5 (model_type "umt5": a position bias in every layer) as transformers
4.x and 5.x write them. transformers 5.x always stores `tie_word_embeddings: true` and keeps
the 1.0-vs-1.1 difference in `scale_decoder_outputs`; 4.x (and the hub's 1.1 and
mT5 configs) say `tie_word_embeddings: false`. Both mean the same two things to
us: whether the output projection is the input embedding and whether the decoder
output is scaled by d_model**-0.5 first. T5Config ties the two (T5 1.0 does both,
1.1 neither); a tied-but-unscaled checkpoint loads as untied, with the projection
a copy of the embedding (see hf_weights.py).
"""

from __future__ import annotations

from t5jax.model.config import ACTIVATIONS, T5Config

# transformers' defaults, for keys an old config.json leaves out.
_DEFAULTS = {
    "t5": dict(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8,
               feed_forward_proj="relu"),
    "mt5": dict(vocab_size=250112, d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_heads=6,
                feed_forward_proj="gated-gelu"),
    "umt5": dict(vocab_size=250112, d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_heads=6,
                 feed_forward_proj="gated-gelu"),
}
_COMMON_DEFAULTS = dict(relative_attention_num_buckets=32, relative_attention_max_distance=128,
                        dropout_rate=0.1, layer_norm_epsilon=1e-6)
# Token ids that t5jax.decode.decoding and the padding masks hard-code.
_SPECIAL_IDS = {"pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0}


def _feed_forward(hf: dict) -> str:
  """Our feed_forward name for transformers' (is_gated_act, dense_act_fn)."""
  proj = hf.get("feed_forward_proj", "relu")
  parts = proj.split("-")
  gated = parts[0] == "gated" and len(parts) == 2
  act = "gelu_new" if proj == "gated-gelu" else parts[-1]
  # A saved dense_act_fn / is_gated_act overrides the derived one in transformers 4.x.
  gated, act = hf.get("is_gated_act", gated), hf.get("dense_act_fn", act)
  # Our "gated-gelu" is transformers' legacy name for the gated tanh GELU.
  tanh_gelu = act in ("gelu_new", "gelu_pytorch_tanh")
  name = "gated-gelu" if gated and tanh_gelu else f"gated-{act}" if gated else act
  if act not in ACTIVATIONS or (gated and act == "gelu"):
    raise ValueError(
        f"feed_forward_proj={proj!r} (is_gated_act={gated}, dense_act_fn={act!r}) is not "
        f"supported; t5jax implements [gated-]ACT with ACT one of {', '.join(ACTIVATIONS)} "
        "(a gated exact 'gelu' only as the tanh 'gated-gelu').")
  return name


def _check_special_ids(hf: dict) -> None:
  """`hf` has its None values dropped, so an unset id counts as the standard one."""
  for key, want in _SPECIAL_IDS.items():
    got = hf.get(key, want)
    ids = got if isinstance(got, list) else [got]
    if ids != [want]:
      raise ValueError(
          f"config.json has {key}={got!r} but t5jax's masks and decoding assume {want}; "
          "only checkpoints with the standard T5 vocabulary ids can be converted.")


def t5config_from_hf(hf_config: dict) -> T5Config:
  """Builds our T5Config from a Hugging Face T5 / mT5 `config.json` dict.

  Args:
    hf_config: the parsed config.json.
  Returns:
    A T5Config with the default dtype, param_dtype and remat_policy (use `.replace`).
  Raises:
    ValueError: one line naming the unsupported setting.
  """
  model_type = hf_config.get("model_type", "t5")
  if model_type not in _DEFAULTS:
    raise ValueError(
        f"config.json has model_type={model_type!r}; only 't5' (T5, Flan-T5, ByT5), 'mt5' and "
        "'umt5' checkpoints can be converted (LongT5 and others have different layers).")
  if not hf_config.get("is_encoder_decoder", True) or hf_config.get("is_decoder", False):
    raise ValueError("config.json describes a single stack (is_encoder_decoder=false or "
                     "is_decoder=true); convert a full T5ForConditionalGeneration checkpoint.")
  hf = {**_COMMON_DEFAULTS, **_DEFAULTS[model_type],
        **{k: v for k, v in hf_config.items() if v is not None}}
  _check_special_ids(hf)
  if model_type == "mt5":
    scaled = False  # transformers 5.x never scales mT5's output, whatever the config says
  else:
    scaled = hf.get("scale_decoder_outputs", hf.get("tie_word_embeddings", True) is not False)
  return T5Config(
      vocab_size=hf["vocab_size"], d_model=hf["d_model"], d_kv=hf["d_kv"], d_ff=hf["d_ff"],
      num_heads=hf["num_heads"], num_encoder_layers=hf["num_layers"],
      num_decoder_layers=hf.get("num_decoder_layers", hf["num_layers"]),
      relative_attention_num_buckets=hf["relative_attention_num_buckets"],
      relative_attention_max_distance=hf["relative_attention_max_distance"],
      dropout_rate=float(hf["dropout_rate"]), feed_forward=_feed_forward(hf),
      tie_word_embeddings=bool(scaled), layer_norm_epsilon=float(hf["layer_norm_epsilon"]),
      relative_attention_per_layer=model_type == "umt5")


def hf_config_from_t5config(cfg: T5Config, tokenizer_class: str | None = None) -> dict:
  """Returns a config.json dict that transformers loads as T5ForConditionalGeneration (or
  UMT5ForConditionalGeneration, for a model with a position bias per layer).

  `tie_word_embeddings: false` is how the hub's T5 1.1 configs say "untied and
  unscaled"; transformers 4.x and 5.x both read it that way. `tokenizer_class` is named
  as the hub's ByT5 configs name theirs ("ByT5Tokenizer").
  """
  umt5 = cfg.relative_attention_per_layer
  return {
      "architectures": ["UMT5ForConditionalGeneration" if umt5 else "T5ForConditionalGeneration"],
      "model_type": "umt5" if umt5 else "t5",
      **({"tokenizer_class": tokenizer_class} if tokenizer_class else {}),
      "vocab_size": cfg.vocab_size,
      "d_model": cfg.d_model,
      "d_kv": cfg.d_kv,
      "d_ff": cfg.d_ff,
      "num_heads": cfg.num_heads,
      "num_layers": cfg.num_encoder_layers,
      "num_decoder_layers": cfg.num_decoder_layers,
      "relative_attention_num_buckets": cfg.relative_attention_num_buckets,
      "relative_attention_max_distance": cfg.relative_attention_max_distance,
      "dropout_rate": cfg.dropout_rate,
      "layer_norm_epsilon": cfg.layer_norm_epsilon,
      "initializer_factor": 1.0,
      "feed_forward_proj": cfg.feed_forward,
      "dense_act_fn": cfg.mlp_activation,
      "is_gated_act": cfg.gated_mlp,
      "tie_word_embeddings": cfg.tie_word_embeddings,
      "is_encoder_decoder": True,
      "use_cache": True,
      "pad_token_id": 0,
      "eos_token_id": 1,
      "decoder_start_token_id": 0,
      "dtype": "float32",
  }
