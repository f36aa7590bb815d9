"""Decoding speed of t5jax against Hugging Face's generate(), same weights, one process.

A random transformers T5ForConditionalGeneration with the dims of a t5jax size
(untied output layer for T5 1.1) is converted to t5jax parameters with
t5jax.interop, so both sides run the same network and their outputs can be
compared token for token. Both decode with a KV cache: greedy, then beam search
(length penalty 0 on both sides, since HF's penalty formula differs from T5's;
HF with early_stopping=True). The two sides take turns call by call (see
paired_times), so both see the same machine. It prints a table, the t5jax / HF
ratio per strategy (of the median times) with the spread of the per-round ratios,
and one JSON line (appended to --json_out if given).

  python benchmarks/decode.py --model t5_1_1_small --layers 2 --dtype float32 \\
      --batch 8 --inputs_length 64 --decode_length 32
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

# Torch runs on the same GPU after JAX: JAX must not take 75% of it up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from t5jax.decode import decoding  # noqa: E402
from t5jax import interop
from t5jax.model import config as model_config  # noqa: E402
from t5jax.model import t5  # noqa: E402

import report  # noqa: E402 (benchmarks/report.py, beside this script)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="t5_1_1_small", choices=sorted(model_config.SIZES))
  p.add_argument("--layers", type=int, default=2, help="encoder and decoder depth (0: the size's)")
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--inputs_length", type=int, default=64)
  p.add_argument("--decode_length", type=int, default=32)
  p.add_argument("--num_beams", type=int, default=4)
  p.add_argument("--repeats", type=int, default=3, help="timed calls per case (median reported)")
  p.add_argument("--warmup", type=int, default=1, help="untimed calls first (compile, caches)")
  p.add_argument("--torch_threads", type=int, default=0,
                 help="torch CPU threads (0: one per core). On a shared, loaded machine "
                      "torch's thread pool can slow down many-fold; try 1.")
  p.add_argument("--skip_hf", action="store_true",
                 help="time t5jax only (the weights still come from a random HF model)")
  p.add_argument("--json_out", default=None, help="append the JSON line to this file")
  return p.parse_args(argv)


def median_times(fn, warmup: int, repeats: int) -> tuple[list[float], list[float]]:
  """Wall times of `fn()` (which must block until done): (warm-up, timed)."""
  times = []
  for _ in range(warmup + repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times[:warmup], times[warmup:]


def make_pair(args):
  """A random HF model and the same network as (t5jax config, params)."""
  import torch
  import transformers

  cfg = model_config.get_config(args.model)
  if args.layers:
    cfg = cfg.replace(num_encoder_layers=args.layers, num_decoder_layers=args.layers)
  torch.manual_seed(0)
  hf = transformers.T5ForConditionalGeneration(transformers.T5Config(
      vocab_size=cfg.vocab_size, d_model=cfg.d_model, d_kv=cfg.d_kv, d_ff=cfg.d_ff,
      num_heads=cfg.num_heads, num_layers=cfg.num_encoder_layers,
      num_decoder_layers=cfg.num_decoder_layers,
      relative_attention_num_buckets=cfg.relative_attention_num_buckets,
      relative_attention_max_distance=cfg.relative_attention_max_distance,
      feed_forward_proj=cfg.feed_forward, tie_word_embeddings=cfg.tie_word_embeddings,
      dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)).eval()
  if not cfg.tie_word_embeddings:
    # transformers 5 ties lm_head to the embedding; T5 1.1 checkpoints have their own.
    with torch.no_grad():
      hf.lm_head.weight = torch.nn.Parameter(
          torch.randn_like(hf.shared.weight) * cfg.d_model**-0.5)
  ours_cfg = interop.t5config_from_hf(hf.config.to_dict()).replace(dtype=args.dtype)
  params = interop.params_from_hf_state_dict(
      {k: v.detach().numpy() for k, v in hf.state_dict().items()}, ours_cfg)
  return hf, ours_cfg, jax.device_put(params)


def steps_run(tokens_bl) -> int:
  """Decode steps a batched loop ran: the longest row (to its EOS, else all L)."""
  t = np.asarray(tokens_bl)
  eos = t == decoding.EOS_ID
  return int(np.where(eos.any(1), eos.argmax(1) + 1, t.shape[1]).max())


def t5jax_runs(cfg, params, enc_bs, args) -> dict:
  """Per strategy, a function that runs one generate() call -> (tokens, logprob)."""
  model = t5.Transformer(cfg)
  # Once per set of weights, as loading them (inference.Predictor does the same).
  weights = decoding.prepare_weights(model, params)
  enc = jax.device_put(enc_bs)
  runs = {}
  for name, strategy in (
      ("greedy", decoding.DecodeConfig("greedy")),
      ("beam", decoding.DecodeConfig("beam", num_beams=args.num_beams, alpha=0.0))):
    def run(strategy=strategy):
      res = jax.block_until_ready(decoding.generate(
          model, weights, enc, max_decode_length=args.decode_length, strategy=strategy))
      return np.asarray(res.tokens_bl), np.asarray(res.logprob_b)
    runs[name] = run
  return runs


def hf_runs(hf, enc_bs, args) -> tuple[dict, dict]:
  """Per strategy, a function that runs one HF generate() call -> tokens; and facts."""
  import torch

  device = torch.device("cuda" if torch.cuda.is_available() and
                        jax.devices()[0].platform == "gpu" else "cpu")
  if device.type == "cpu":
    torch.set_num_threads(args.torch_threads or len(os.sched_getaffinity(0)))
  hf = hf.to(device)
  ids = torch.from_numpy(enc_bs).long().to(device)
  mask = (ids > 0).long()
  sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
  runs = {}
  for name, kwargs in (
      ("greedy", dict(num_beams=1)),
      ("beam", dict(num_beams=args.num_beams, length_penalty=0.0, early_stopping=True))):
    def run(kwargs=kwargs):
      with torch.no_grad():
        seqs = hf.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                           max_new_tokens=args.decode_length, use_cache=True, **kwargs)
      sync()
      seqs = seqs[:, 1:].cpu().numpy()  # drop the start token
      seqs = np.pad(seqs, ((0, 0), (0, args.decode_length - seqs.shape[1])))
      eos = (seqs == decoding.EOS_ID).astype(int)
      return np.where(np.cumsum(eos, 1) - eos > 0, 0, seqs)  # HF pads with EOS, we with 0
    runs[name] = run
  return runs, {"threads": torch.get_num_threads(), "device": str(device)}


def paired_times(fns: dict, warmup: int, repeats: int) -> tuple[dict, dict, dict]:
  """Wall times of each fn() over `repeats` rounds that take turns, after `warmup`
  untimed calls of each: (timed, warm-up), both {name: [seconds]}, and {name: what
  its last call returned}.

  The sides alternate call by call, in reversed order every other round (A B B A ...),
  so a slow spell of a shared machine falls on both sides alike and the per-round
  ratios see the same machine.
  """
  warm = {name: median_times(fn, warmup, 0)[0] for name, fn in fns.items()}
  timed, last = {name: [] for name in fns}, {}
  order = list(fns)
  for r in range(repeats):
    for name in (order if r % 2 == 0 else order[::-1]):
      start = time.perf_counter()
      last[name] = fns[name]()
      timed[name].append(time.perf_counter() - start)
  return timed, warm, last


def machine() -> dict:
  cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
              if line.startswith("model name")), platform.processor())
  dev = jax.devices()[0]
  return {"cpu": cpu, "affinity": len(os.sched_getaffinity(0)),
          "jax_device": f"{dev.platform}:{dev.device_kind}", "jax": jax.__version__,
          "loadavg_1m": os.getloadavg()[0]}


def main(argv=None):
  args = parse_args(argv)
  b, s, l = args.batch, args.inputs_length, args.decode_length
  hf, cfg, params = make_pair(args)
  enc_bs = np.random.default_rng(0).integers(2, cfg.vocab_size, (b, s)).astype(np.int32)
  info = machine()
  ours = t5jax_runs(cfg, params, enc_bs, args)
  theirs, hf_info = (None, None) if args.skip_hf else hf_runs(hf, enc_bs, args)

  rows = {}
  for name in ("greedy", "beam"):
    fns = {"t5jax": ours[name]} if theirs is None else {"t5jax": ours[name], "hf": theirs[name]}
    timed, warm, last = paired_times(fns, args.warmup, args.repeats)
    tokens, _ = last["t5jax"]
    r = {"t5jax_s": statistics.median(timed["t5jax"]), "t5jax_times_s": timed["t5jax"],
         "t5jax_first_call_s": warm["t5jax"][0], "steps": steps_run(tokens)}
    r["t5jax_tokens_per_s"] = b * r["steps"] / r["t5jax_s"]
    if theirs:
      hf_tokens = last["hf"]
      hf_steps = steps_run(hf_tokens)
      r.update(hf_s=statistics.median(timed["hf"]), hf_times_s=timed["hf"], hf_steps=hf_steps,
               same_rows=int((hf_tokens == tokens).all(1).sum()))
      r["hf_tokens_per_s"] = b * hf_steps / r["hf_s"]
      r["t5jax_over_hf"] = r["t5jax_tokens_per_s"] / r["hf_tokens_per_s"]
      # The same ratio per round (t5jax and HF back to back): its spread is the run's.
      r["round_ratios"] = sorted(h / t * r["steps"] / hf_steps
                                 for t, h in zip(timed["t5jax"], timed["hf"]))
    rows[name] = r
  num_params = sum(x.size for x in jax.tree.leaves(params))
  result = {"benchmark": "decode", "model": args.model, "layers": args.layers,
            "dtype": args.dtype, "batch": b, "inputs_length": s, "decode_length": l,
            "num_beams": args.num_beams, "repeats": args.repeats, "machine": info,
            "num_params": int(num_params), "hf_threads": hf_info and hf_info["threads"],
            "hf_device": hf_info and hf_info["device"], "results": rows}

  print(f"\n{args.model} (layers={args.layers or 'all'}, {num_params:,} params) {args.dtype}, "
        f"batch {b}, input {s}, decode {l}, {args.num_beams} beams; {info['jax_device']}, "
        f"{info['cpu']} ({info['affinity']} cores, load {info['loadavg_1m']:.1f})"
        + (f"; HF on {hf_info['device']}, {hf_info['threads']} torch threads" if theirs else ""))
  print("tokens/s = batch x decode steps run / median wall time of one generate() call")
  print("| strategy | t5jax s | t5jax tok/s | HF s   | HF tok/s | t5jax/HF | same rows |")
  print("|----------|---------|-------------|--------|----------|----------|-----------|")
  for name, r in rows.items():
    hf_part = (f"{r['hf_s']:6.3f} | {r['hf_tokens_per_s']:8,.0f} | {r['t5jax_over_hf']:7.2f}x "
               f"| {r['same_rows']:>4}/{b:<4} |") if theirs else "     - |        - |        - |        - |"
    print(f"| {name:8} | {r['t5jax_s']:7.3f} | {r['t5jax_tokens_per_s']:11,.0f} | {hf_part}")
  if theirs:
    print("per-round t5jax/HF (each round's two calls back to back), min-max: " + ", ".join(
        f"{name} {r['round_ratios'][0]:.2f}-{r['round_ratios'][-1]:.2f}x"
        for name, r in rows.items()))
  report.emit_json(result, args.json_out)
  return result


if __name__ == "__main__":
  main()
