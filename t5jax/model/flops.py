"""Analytic model FLOPs of a T5 training step (for MFU and capacity planning)."""

from __future__ import annotations

from t5jax.model.config import T5Config


def model_flops_per_step(cfg: T5Config, b: int, s: int, t: int) -> dict[str, float]:
  """Matmul FLOPs of one training step (forward x 3: backward is two matmuls per
  forward one). Embedding lookups, norms, softmax and the optimizer are not counted;
  causal self-attention is counted at full T x T, as XLA computes it."""
  nh = cfg.num_heads * cfg.d_kv
  ffn = (3 if cfg.gated_mlp else 2) * cfg.d_model * cfg.d_ff
  fwd = {
      "encoder": cfg.num_encoder_layers * (
          2 * b * s * (4 * cfg.d_model * nh + ffn) + 4 * b * s * s * nh),
      "decoder": cfg.num_decoder_layers * (
          2 * b * t * (6 * cfg.d_model * nh + ffn)  # self q,k,v,o; cross q,o; mlp
          + 2 * b * s * 2 * cfg.d_model * nh        # cross k,v over the encoder output
          + 4 * b * t * t * nh + 4 * b * t * s * nh),  # self and cross scores + AV
      "logits": 2 * b * t * cfg.d_model * cfg.vocab_size,
  }
  out = {k: 3.0 * v for k, v in fwd.items()}
  out["total"] = sum(out.values())
  return out
