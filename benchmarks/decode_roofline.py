"""How fast can a decode step be here? Weight bytes per step over memory bandwidth.

A batch-8 decode step multiplies [8, d_model] rows by every decoder weight and by the
[d_model, vocab] output kernel: a few FLOPs per weight byte, so the step waits on
memory, not on arithmetic. This measures, in one process, the rate at which each side
streams an fp32 [d_model, vocab] kernel through a [batch, d_model] x [d_model, vocab]
matmul (the largest op of a step): XLA on all the cores jax uses, and torch on one
thread (decode.py's HF protocol); a child process pinned to one core gives XLA's
one-core rate. It also counts the bytes a greedy step must read (decoder weights
without the cross-attention K/V projections, which run once; the output kernel; the
K/V caches at half the decode length) and prints each side's step time at its
measured rate. decode.py's step times over these give each side's share of its
roofline; the bandwidth ratio bounds the t5jax / HF ratio a bandwidth-bound step can
show when t5jax reaches its roofline:

  python benchmarks/decode_roofline.py --model t5_1_1_small --layers 2 --batch 8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

import numpy as np

from decode import median_times  # noqa: E402 (benchmarks/decode.py, beside this script)
from report import emit_json


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="t5_1_1_small")
  p.add_argument("--layers", type=int, default=2, help="decoder depth (0: the size's)")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--inputs_length", type=int, default=64)
  p.add_argument("--decode_length", type=int, default=32)
  p.add_argument("--repeats", type=int, default=50)
  p.add_argument("--xla_only", action="store_true", help=argparse.SUPPRESS)  # the child
  p.add_argument("--json_out", default=None, help="append the JSON line to this file")
  return p.parse_args(argv)


def seconds_per_call(fn, repeats: int) -> float:
  """Median wall seconds of `fn()` over `repeats` calls, after two untimed ones."""
  return statistics.median(median_times(fn, warmup=2, repeats=repeats)[1])


def xla_bytes_per_s(rows_bd: np.ndarray, kernel_dv: np.ndarray, repeats: int) -> float:
  import jax
  import jax.numpy as jnp
  rows, kernel = jnp.asarray(rows_bd), jnp.asarray(kernel_dv)
  matmul = jax.jit(jnp.matmul)
  return kernel.nbytes / seconds_per_call(lambda: matmul(rows, kernel).block_until_ready(),
                                          repeats)


def torch_bytes_per_s(rows_bd: np.ndarray, kernel_dv: np.ndarray, repeats: int) -> float:
  import torch
  torch.set_num_threads(1)
  rows, kernel = torch.from_numpy(rows_bd), torch.from_numpy(kernel_dv)
  with torch.inference_mode():
    return kernel_dv.nbytes / seconds_per_call(lambda: rows @ kernel, repeats)


def greedy_step_bytes(cfg, batch: int, inputs_length: int, decode_length: int) -> dict:
  """fp32 bytes one greedy step reads: weights it multiplies by, and the K/V caches."""
  d, f, nh = cfg.d_model, cfg.d_ff, cfg.num_heads * cfg.d_kv
  mlp = (3 if cfg.gated_mlp else 2) * d * f
  per_layer = 4 * d * nh + 2 * d * nh + mlp + 3 * d  # self q,k,v,o; cross q,o; MLP; norms
  weights = 4 * (cfg.num_decoder_layers * per_layer + d * cfg.vocab_size)
  caches = 4 * cfg.num_decoder_layers * 2 * batch * nh * (inputs_length + decode_length // 2)
  return {"weights": weights, "caches": caches, "total": weights + caches}


def main(argv=None) -> None:
  args = parse_args(argv)
  from t5jax.model import config as model_config
  overrides = {"num_decoder_layers": args.layers} if args.layers else {}
  cfg = model_config.get_config(args.model, dtype="float32", **overrides)
  rng = np.random.default_rng(0)
  rows_bd = rng.normal(size=(args.batch, cfg.d_model)).astype(np.float32)
  kernel_dv = rng.normal(size=(cfg.d_model, cfg.vocab_size)).astype(np.float32)
  if args.xla_only:  # the child: pinned to one core before jax starts its threads
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    print(json.dumps({"xla": xla_bytes_per_s(rows_bd, kernel_dv, args.repeats)}))
    return
  xla_all = xla_bytes_per_s(rows_bd, kernel_dv, args.repeats)
  torch_one = torch_bytes_per_s(rows_bd, kernel_dv, args.repeats)
  child = subprocess.run(
      [sys.executable, __file__, "--xla_only", "--model", args.model, "--layers",
       str(args.layers), "--batch", str(args.batch), "--repeats", str(args.repeats)],
      capture_output=True, text=True, check=True)
  xla_one = json.loads(child.stdout.strip().splitlines()[-1])["xla"]
  step = greedy_step_bytes(cfg, args.batch, args.inputs_length, args.decode_length)
  gb = lambda x: x / 1e9
  print(f"[{args.batch}, {cfg.d_model}] x [{cfg.d_model}, {cfg.vocab_size}] fp32, weight GB/s: "
        f"XLA on {len(os.sched_getaffinity(0))} cores {gb(xla_all):.1f}, XLA on one core "
        f"{gb(xla_one):.1f}, torch on one thread {gb(torch_one):.1f}")
  print(f"greedy step of {args.model} with {cfg.num_decoder_layers} decoder layers, batch "
        f"{args.batch}: reads {step['total'] / 1e6:.1f} MB ({step['weights'] / 1e6:.1f} MB of "
        f"weights); at those rates {1e3 * step['total'] / xla_all:.2f} ms (t5jax) and "
        f"{1e3 * step['total'] / torch_one:.2f} ms (HF)")
  print(f"bandwidth ratio, t5jax (all cores) / HF (one thread): {xla_all / torch_one:.2f}x")
  emit_json({"benchmark": "decode_roofline", "model": args.model,
             "decoder_layers": cfg.num_decoder_layers, "batch": args.batch,
             "xla_all_cores_bytes_per_s": xla_all, "xla_one_core_bytes_per_s": xla_one,
             "torch_one_thread_bytes_per_s": torch_one, "step_bytes": step,
             "t5jax_roofline_step_s": step["total"] / xla_all,
             "hf_roofline_step_s": step["total"] / torch_one,
             "bandwidth_ratio": xla_all / torch_one}, args.json_out)


if __name__ == "__main__":
  main()
