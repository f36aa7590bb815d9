"""Row-by-row attention on one CPU device against the batched einsums, in one process.

attention_kernels.attend() takes long rows one input row at a time on a single CPU device
(attention_kernels.attend_row_by_row). This times, with the two sides taking turns call
by call (decode.paired_times): the attention alone (forward, and forward plus
backward), the encoder of a t5jax model, and greedy decoding (encoder included),
each once with config.attention_row_by_row and once without. Random weights;
both sides must give the same numbers (checked).

  python benchmarks/attention_rows.py --model t5_1_1_small --layers 2 --batch 8 \\
      --inputs_length 512
"""

from __future__ import annotations

import argparse
import json
import statistics

import jax
import jax.numpy as jnp
import numpy as np

from t5jax.decode import decoding
from t5jax.model import config as model_config
from t5jax.model import attention_kernels, devices, t5

import decode  # noqa: E402 (benchmarks/decode.py, beside this script)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="t5_1_1_small", choices=sorted(model_config.SIZES))
  p.add_argument("--layers", type=int, default=2, help="encoder and decoder depth (0: the size's)")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--inputs_length", type=int, default=512)
  p.add_argument("--decode_length", type=int, default=32)
  p.add_argument("--repeats", type=int, default=7)
  p.add_argument("--json_out", default=None, help="append the JSON line to this file")
  return p.parse_args(argv)


def paired(name: str, fns: dict, args, repeats: int, check) -> dict:
  """Median times of fns["batched"](*args) and fns["rows"](*args), taking turns, and
  their ratio; check(rows' result, batched result) must pass."""
  calls = {side: (lambda f=jax.jit(fn): jax.block_until_ready(f(*args)))
           for side, fn in fns.items()}
  timed, _, last = decode.paired_times(calls, warmup=1, repeats=repeats)
  check(last["rows"], last["batched"])
  med = {side: statistics.median(t) for side, t in timed.items()}
  rounds = [b / r for b, r in zip(timed["batched"], timed["rows"])]
  print(f"| {name:24s} | {med['batched'] * 1e3:10.1f} | {med['rows'] * 1e3:9.1f} | "
        f"{med['batched'] / med['rows']:5.2f}x | {min(rounds):.2f}-{max(rounds):.2f}x |")
  return {"batched_s": med["batched"], "rows_s": med["rows"],
          "speedup": med["batched"] / med["rows"], "round_speedups": rounds}


def main(argv=None):
  args = parse_args(argv)
  if not devices.on_one_cpu_device():
    raise SystemExit(f"Row-by-row attention runs only on one CPU device; this process has "
                     f"{jax.device_count()} {jax.default_backend()} device(s). Unset "
                     "XLA_FLAGS=--xla_force_host_platform_device_count (or JAX_PLATFORMS=cpu "
                     "on a GPU host).")
  overrides = {} if args.layers == 0 else {"num_encoder_layers": args.layers,
                                           "num_decoder_layers": args.layers}
  cfgs = {side: model_config.get_config(args.model, dtype="float32", dropout_rate=0.0,
                                        attention_row_by_row=(side == "rows"), **overrides)
          for side in ("batched", "rows")}
  cfg = cfgs["rows"]
  models = {side: t5.Transformer(c) for side, c in cfgs.items()}
  b, s, n, h = args.batch, args.inputs_length, cfg.num_heads, cfg.d_kv
  rng = np.random.default_rng(0)
  tokens_bs = jnp.asarray(rng.integers(2, cfg.vocab_size, (b, s)), jnp.int32)
  params = jax.jit(models["rows"].init)(jax.random.key(0), tokens_bs[:, :8],
                                        tokens_bs[:, :8])["params"]
  q, k, v = (jnp.asarray(rng.normal(size=(b, s, n, h)) * 0.3, jnp.float32) for _ in range(3))
  bias_nss = jnp.asarray(rng.normal(size=(n, s, s)), jnp.float32)
  mask_bss = jnp.ones((b, s, s), bool).at[:, :, s - s // 8:].set(False)  # padded keys
  probe = jnp.asarray(rng.normal(size=(b, s, n, h)), jnp.float32)

  close = lambda got, want: np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  all_close = lambda got, want: [close(g, w) for g, w in zip(got, want)]
  same_tokens = np.testing.assert_array_equal
  per_side = lambda make: {side: make(cfgs[side], models[side]) for side in cfgs}
  attend = lambda c: lambda q, k, v, bias: attention_kernels.attend(c, q, k, v, mask_bss, bias)
  grads = lambda c: jax.grad(lambda *a: jnp.sum(attend(c)(*a) * probe), argnums=(0, 1, 2, 3))
  strategy = decoding.DecodeConfig("greedy")
  print(f"{args.model} ({cfg.num_encoder_layers}+{cfg.num_decoder_layers} layers) float32, "
        f"batch {b}, input {s}, decode {args.decode_length}; {decode.machine()}")
  print("| call                     | batched ms |   rows ms | ratio | per round |")
  print("|--------------------------|-----------:|----------:|------:|----------:|")
  qkv = (q, k, v, bias_nss)
  results = {
      "attention": paired("attention (one layer)", per_side(lambda c, m: attend(c)), qkv,
                          args.repeats, close),
      "attention_grad": paired("attention fwd+bwd", per_side(lambda c, m: grads(c)), qkv,
                               args.repeats, all_close),
      "encode": paired("encode", per_side(lambda c, m: lambda p, e: decoding.encode(m, p, e)),
                       (params, tokens_bs), args.repeats, close),
      "greedy": paired("greedy generate()", per_side(lambda c, m: lambda p, e: decoding.generate(
          m, p, e, max_decode_length=args.decode_length, strategy=strategy).tokens_bl),
          (params, tokens_bs), args.repeats, same_tokens),
  }
  line = {"benchmark": "attention_rows", **{k: v for k, v in vars(args).items()
                                             if k != "json_out"},
          "machine": decode.machine(), "results": results}
  print(json.dumps(line))
  if args.json_out:
    with open(args.json_out, "a") as f:
      f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
  main()
