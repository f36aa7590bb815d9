"""Train-step speed of t5jax against Hugging Face's PyTorch T5, and MFU, in one process.

Three measurements, one model config (from t5jax's SIZES, so both sides are the
same network):
  1. the device's matmul peak for the dtype: a large jitted jnp.dot, FLOP/s;
  2. t5jax's jitted, sharded train step (Adafactor, optimizer update included);
  3. transformers' T5ForConditionalGeneration: forward, backward, Adafactor step.
It prints a table, the t5jax / HF ratio, and one JSON line (appended to
--json_out if given). docs/performance/training.md has the formulas and measured figures.

  python benchmarks/train_step.py --model t5_1_1_base --dtype bfloat16 \\
      --batch 32 --inputs_length 512 --targets_length 114 --steps 5 --rounds 3
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import time

# Torch runs on the same GPU after JAX: JAX must not take 75% of it up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from t5jax.train import losses, optim, step as train_step  # noqa: E402
from t5jax.parallel import partitioning
from t5jax.model import config as model_config  # noqa: E402
from t5jax.model import t5  # noqa: E402
from t5jax.model.flops import model_flops_per_step  # noqa: E402

import report  # noqa: E402 (benchmarks/report.py, beside this script)

def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="t5_1_1_tiny", choices=sorted(model_config.SIZES))
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--inputs_length", type=int, default=64)
  p.add_argument("--targets_length", type=int, default=64)
  p.add_argument("--steps", type=int, default=3, help="timed steps per side and round")
  p.add_argument("--rounds", type=int, default=3,
                 help="rounds in which the sides take turns (median over all steps)")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps first (compile, caches)")
  p.add_argument("--mesh", default="-1,1,1", help="data,fsdp,tensor sizes; -1 = the rest")
  p.add_argument("--attention_impl", default="auto", choices=model_config.ATTENTION_IMPLS,
                 help="T5Config.attention_impl (auto: cuDNN's fused kernel on a GPU)")
  p.add_argument("--attention_query_block", type=int, default=0,
                 help="T5Config.attention_query_block (0: all queries at once)")
  p.add_argument("--layers", type=int, default=None,
                 help="override encoder and decoder depth (shallow CPU runs)")
  p.add_argument("--peak_size", type=int, default=None,
                 help="matmul side for the peak (default: 8192 on GPU/TPU, 2048 on CPU)")
  p.add_argument("--peak_repeats", type=int, default=10)
  p.add_argument("--skip_hf", action="store_true", help="t5jax only")
  p.add_argument("--cross_entropy", default="fused", choices=("fused", "unfused", "both"),
                 help="t5jax's loss: LossConfig.fused_cross_entropy on, off, or both as two "
                      "sides taking turns (the unfused one reported as t5jax_unfused)")
  p.add_argument("--fused_block_tokens", type=int, default=losses.LossConfig.fused_block_tokens)
  p.add_argument("--torch_threads", type=int, default=None,
                 help="torch CPU threads (default: the cores this process may use)")
  p.add_argument("--json_out", default=None, help="append the JSON line to this file")
  return p.parse_args(argv)


def model_cfg(args) -> model_config.T5Config:
  overrides = {"dtype": args.dtype, "attention_impl": args.attention_impl,
               "attention_query_block": args.attention_query_block}
  if args.layers:
    overrides.update(num_encoder_layers=args.layers, num_decoder_layers=args.layers)
  return model_config.get_config(args.model, **overrides)


def synthetic_batch(b: int, s: int, t: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Full-length, unpacked rows (one segment, no padding): what HF can also take."""
  rng = np.random.default_rng(seed)
  targets = rng.integers(2, vocab, (b, t), dtype=np.int32)
  ones_bs, ones_bt = np.ones((b, s), np.int32), np.ones((b, t), np.int32)
  return {
      "encoder_input_tokens": rng.integers(2, vocab, (b, s), dtype=np.int32),
      "encoder_segment_ids": ones_bs,
      "encoder_positions": np.broadcast_to(np.arange(s, dtype=np.int32), (b, s)).copy(),
      "decoder_input_tokens": np.concatenate([np.zeros((b, 1), np.int32), targets[:, :-1]], 1),
      "decoder_target_tokens": targets,
      "decoder_loss_weights": ones_bt,
      "decoder_segment_ids": ones_bt,
      "decoder_positions": np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy(),
      "decoder_task_ids": np.zeros((b, t), np.int32),
  }


def timed(fn) -> float:
  """Wall seconds of one `fn()`, which must block until its work is done."""
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def jax_matmul_peak(dtype: str, size: int | None, repeats: int) -> dict:
  """One device's square jnp.dot on random data: FLOP/s of the median and of the
  fastest repeat. main() takes the best repeat of all rounds as the peak, since a peak is
  what the device can do and other processes can only slow a repeat down."""
  platform_name = jax.devices()[0].platform
  n = size or (2048 if platform_name == "cpu" else 8192)
  ka, kb = jax.random.split(jax.random.key(0))
  a = jax.random.normal(ka, (n, n), dtype)
  b = jax.random.normal(kb, (n, n), dtype)
  dot = jax.jit(jnp.dot)
  times = [timed(lambda: dot(a, b).block_until_ready()) for _ in range(2 + repeats)][2:]
  return {"size": n, "median_flops": 2.0 * n**3 / statistics.median(times),
          "best_flops": 2.0 * n**3 / min(times)}


def torch_matmul_rate(dtype: str, n: int, repeats: int, device) -> float:
  """The same product through torch (its BLAS may differ from XLA's): FLOP/s."""
  import torch
  tdt = getattr(torch, dtype)
  a = torch.randn(n, n, dtype=tdt, device=device)
  b = torch.randn(n, n, dtype=tdt, device=device)
  sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
  times = [timed(lambda: (torch.mm(a, b), sync())) for _ in range(2 + repeats)][2:]
  return 2.0 * n**3 / statistics.median(times)


def setup_t5jax(cfg, args, batch_np, loss_cfg: losses.LossConfig):
  """The jitted step the training loop uses, on a batch already on device.

  Returns:
    (run, info, finish): run() does one step and blocks; info holds compile figures,
    and finish() adds the last loss and the number of compiled versions of the step.
  """
  mesh_shape = tuple(int(x) for x in args.mesh.split(","))
  mesh = partitioning.make_mesh(partitioning.MeshConfig(*mesh_shape))
  partitioning.check_batch_size(args.batch, mesh)
  model = t5.Transformer(cfg)
  opt_cfg = optim.OptimizerConfig(name="adafactor")
  tx = optim.make_optimizer(opt_cfg)
  with partitioning.sharding_context(mesh):
    state, shardings = train_step.create_train_state(
        model, tx, mesh, seed=0, inputs_length=args.inputs_length,
        targets_length=args.targets_length)
    step = train_step.jit_train_step(
        mesh, shardings, train_step.StepSettings(
            model=model, tx=tx, loss_cfg=loss_cfg,
            task_weights_k=loss_cfg.weights_vector(["bench"]), microbatches=1,
            schedule=optim.learning_rate_schedule(opt_cfg)))
    batch = partitioning.host_batch_to_global(batch_np, mesh)
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  last = {}

  def run():
    nonlocal state
    # The guard turns any hidden host<->device copy inside the step into an error.
    with partitioning.sharding_context(mesh), jax.transfer_guard("disallow"):
      state, last["metrics"] = step(state, batch)
      jax.block_until_ready((state, last["metrics"]))

  info = {"aot_compile_s": compile_s, "xla_flops_per_device": float(cost.get("flops", -1)),
          "devices": mesh.size, "mesh": dict(mesh.shape),
          "num_params": int(sum(x.size for x in jax.tree.leaves(state.params)))}

  def finish(info=info):
    info["final_loss"] = float(last["metrics"]["loss"])
    info["jit_cache_entries"] = step._cache_size() if hasattr(step, "_cache_size") else None
  return run, info, finish


def hf_config(cfg: model_config.T5Config):
  """The transformers.T5Config of the same network."""
  import transformers
  return transformers.T5Config(
      vocab_size=cfg.vocab_size, d_model=cfg.d_model, d_kv=cfg.d_kv, d_ff=cfg.d_ff,
      num_layers=cfg.num_encoder_layers, num_decoder_layers=cfg.num_decoder_layers,
      num_heads=cfg.num_heads, relative_attention_num_buckets=cfg.relative_attention_num_buckets,
      relative_attention_max_distance=cfg.relative_attention_max_distance,
      dropout_rate=cfg.dropout_rate, layer_norm_epsilon=cfg.layer_norm_epsilon,
      feed_forward_proj=cfg.feed_forward, tie_word_embeddings=cfg.tie_word_embeddings,
      decoder_start_token_id=0, pad_token_id=0, use_cache=False)


def setup_hf(cfg, args, batch_np):
  """HF T5 in eager PyTorch: fp32 weights, bf16 autocast when --dtype bfloat16 (the
  analogue of t5jax's fp32 parameters with bf16 activations); T5's Adafactor
  (transformers.Adafactor, fixed lr 0.01, parameter scaling, update clipping, no
  momentum) after clipping the global norm to 1, as optim.OptimizerConfig does."""
  import torch
  import transformers
  from transformers.optimization import Adafactor

  device = torch.device("cuda" if torch.cuda.is_available() and
                        jax.devices()[0].platform == "gpu" else "cpu")
  if device.type == "cpu":
    torch.set_num_threads(args.torch_threads or len(os.sched_getaffinity(0)))
  torch.manual_seed(0)
  model = transformers.T5ForConditionalGeneration(hf_config(cfg))
  if not cfg.tie_word_embeddings:
    # transformers 5 always ties lm_head to the input embedding (T5Config forces
    # tie_word_embeddings=True and keeps only the 1.1 no-rescale flag): untie it by
    # hand so that both sides train the same parameters, with t5jax's init of
    # logits_dense: HF's std 1.0 without 1.0's rescaling made the loss climb to 24.
    model.lm_head.weight = torch.nn.Parameter(
        torch.randn_like(model.shared.weight) * cfg.d_model**-0.5)
  model = model.to(device).train()
  opt = Adafactor(model.parameters(), lr=0.01, relative_step=False, scale_parameter=True,
                  warmup_init=False, clip_threshold=1.0, decay_rate=-0.8, beta1=None)
  tensors = {k: torch.from_numpy(batch_np[k]).long().to(device) for k in (
      "encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")}
  attention_mask = torch.ones_like(tensors["encoder_input_tokens"])
  autocast = torch.autocast(device.type, dtype=torch.bfloat16,
                            enabled=args.dtype == "bfloat16")
  sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

  last = {}

  def run():
    with autocast:
      out = model(input_ids=tensors["encoder_input_tokens"], attention_mask=attention_mask,
                  decoder_input_ids=tensors["decoder_input_tokens"],
                  labels=tensors["decoder_target_tokens"])
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    sync()
    last["loss"] = out.loss.detach()

  info = {"threads": torch.get_num_threads(), "device": str(device),
          "num_params": sum(p.numel() for p in model.parameters()),
          "torch": torch.__version__, "transformers": transformers.__version__}

  def finish(info=info):
    info["final_loss"] = last["loss"].item()
    info["torch_matmul_flops"] = torch_matmul_rate(args.dtype, args.peak_size or (
        2048 if device.type == "cpu" else 8192), args.peak_repeats, device)
  return run, info, finish


def machine() -> dict:
  cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
              if line.startswith("model name")), platform.processor())
  dev = jax.devices()[0]
  return {"cpu": cpu, "nproc": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
          "jax_device": f"{dev.platform}:{dev.device_kind}", "jax_devices": jax.device_count(),
          "jax": jax.__version__, "loadavg_1m": os.getloadavg()[0]}


def measure(sides: dict, args, peak_fn) -> tuple[dict, list]:
  """Warm-up, then `rounds` rounds of `steps` timed steps per side, the sides taking
  turns, so that load from other processes falls on both alike; a matmul-peak round
  after each round. Returns ({side: {"warmup_s", "step_times_s"}}, peak rounds)."""
  times = {name: {"warmup_s": [timed(run) for _ in range(args.warmup)], "step_times_s": []}
           for name, run in sides.items()}
  peaks = [peak_fn()]
  for _ in range(args.rounds):
    for name, run in sides.items():
      times[name]["step_times_s"].append([timed(run) for _ in range(args.steps)])
    peaks.append(peak_fn())
  return times, peaks


def main(argv=None):
  args = parse_args(argv)
  cfg = model_cfg(args)
  b, s, t = args.batch, args.inputs_length, args.targets_length
  batch_np = synthetic_batch(b, s, t, cfg.vocab_size)
  info = machine()
  flops = model_flops_per_step(cfg, b, s, t)
  loss_cfg = lambda fused: losses.LossConfig(fused_cross_entropy=fused,
                                             fused_block_tokens=args.fused_block_tokens)
  sides = {"t5jax": setup_t5jax(cfg, args, batch_np, loss_cfg(args.cross_entropy != "unfused"))}
  if args.cross_entropy == "both":
    sides["t5jax_unfused"] = setup_t5jax(cfg, args, batch_np, loss_cfg(False))
  if not args.skip_hf:
    sides["hf"] = setup_hf(cfg, args, batch_np)
  times, peak_rounds = measure({k: v[0] for k, v in sides.items()}, args,
                               lambda: jax_matmul_peak(args.dtype, args.peak_size,
                                                       args.peak_repeats))
  for _, _, finish in sides.values():
    finish()
  info["loadavg_1m_end"] = os.getloadavg()[0]
  peak = {"size": peak_rounds[0]["size"], "rounds": peak_rounds,
          "flops": max(r["best_flops"] for r in peak_rounds)}
  ours = {**sides["t5jax"][1], **times["t5jax"]}
  hf = {**sides["hf"][1], **times["hf"]} if "hf" in sides else None
  unfused = ({**sides["t5jax_unfused"][1], **times["t5jax_unfused"]}
             if "t5jax_unfused" in sides else None)

  peak_all = peak["flops"] * ours["devices"]  # MFU is against every device in the mesh
  for r in filter(None, (ours, hf, unfused)):
    r["step_s"] = step_s = statistics.median(x for rnd in r["step_times_s"] for x in rnd)
    r.update(tokens_per_s=b * (s + t) / step_s, target_tokens_per_s=b * t / step_s,
             model_flops_per_s=flops["total"] / step_s,
             mfu=flops["total"] / step_s / peak_all)
  round_ratios = [statistics.median(h) / statistics.median(o) for o, h in
                  zip(ours["step_times_s"], hf["step_times_s"])] if hf else []
  result = {
      "benchmark": "train_step", "model": args.model, "layers": args.layers, "dtype": args.dtype,
      "batch": b, "inputs_length": s, "targets_length": t, "steps": args.steps,
      "rounds": args.rounds, "warmup": args.warmup, "machine": info, "matmul_peak": peak,
      "cross_entropy": args.cross_entropy, "fused_block_tokens": args.fused_block_tokens,
      "t5jax_unfused": unfused,
      "fused_over_unfused": unfused["step_s"] / ours["step_s"] if unfused else None,
      "model_flops_per_step": flops, "t5jax": ours, "hf": hf,
      "t5jax_over_hf": hf["step_s"] / ours["step_s"] if hf else None,
      "t5jax_over_hf_per_round": round_ratios,
      "config": dataclasses.asdict(cfg),
  }

  print(f"\n{args.model}{f' (layers={args.layers})' if args.layers else ''} {args.dtype} "
        f"batch {b} x {s}/{t}, mesh {ours['mesh']}, {info['jax_device']}, {info['cpu']} "
        f"({info['affinity']} cores, 1-min load {info['loadavg_1m']:.1f} at start, "
        f"{info['loadavg_1m_end']:.1f} at end)")
  medians = ", ".join(f"{r['median_flops'] / 1e9:,.1f}" for r in peak_rounds)
  print(f"matmul peak (jnp.dot {peak['size']}^2, {args.dtype}): {peak['flops'] / 1e9:,.1f} "
        f"GFLOP/s per device (best repeat; round medians {medians})" +
        (f"; torch.mm median: {hf['torch_matmul_flops'] / 1e9:,.1f}" if hf else ""))
  print(f"model FLOPs/step: {flops['total'] / 1e9:,.2f} G (analytic matmuls; encoder "
        f"{flops['encoder'] / 1e9:,.2f}, decoder {flops['decoder'] / 1e9:,.2f}, logits "
        f"{flops['logits'] / 1e9:,.2f}); XLA cost_analysis: "
        f"{ours['xla_flops_per_device'] * ours['devices'] / 1e9:,.2f} G")
  print(f"t5jax: compile {ours['aot_compile_s']:.1f} s, first call {ours['warmup_s'][0]:.2f} s, "
        f"jit cache entries after {args.warmup + args.rounds * args.steps} calls: "
        f"{ours['jit_cache_entries']}, loss {ours['final_loss']:.3f}")
  if hf:
    print(f"HF:    {hf['device']}, {hf['threads']} torch threads, first call "
          f"{hf['warmup_s'][0]:.2f} s, loss {hf['final_loss']:.3f}")
  if hf and hf["num_params"] != ours["num_params"]:
    print(f"WARNING: parameter counts differ: t5jax {ours['num_params']:,}, "
          f"HF {hf['num_params']:,}; the two sides are not the same network.")
  print(f"parameters: t5jax {ours['num_params']:,}" +
        (f", HF {hf['num_params']:,}" if hf else ""))
  print("| side  | step s median [min-max] | tokens/s | target tok/s | model TFLOP/s |   MFU |")
  print("|-------|-------------------------|----------|--------------|---------------|-------|")
  for name, r in (("t5jax", ours), ("HF", hf), ("unfsd", unfused)):
    if r:
      all_s = [x for rnd in r["step_times_s"] for x in rnd]
      spread = f"{r['step_s']:.3f} [{min(all_s):.3f}-{max(all_s):.3f}]"
      print(f"| {name:5} | {spread:>23} | {r['tokens_per_s']:8,.0f} | "
            f"{r['target_tokens_per_s']:12,.0f} | {r['model_flops_per_s'] / 1e12:13.4f} | "
            f"{r['mfu']:5.1%} |")
  if hf:
    print(f"t5jax / HF tokens/s: {result['t5jax_over_hf']:.2f}x (per round: "
          f"{', '.join(f'{x:.2f}' for x in round_ratios)})")
  if unfused:
    print(f"t5jax fused / unfused cross-entropy tokens/s: {result['fused_over_unfused']:.2f}x "
          f"(unfused loss {unfused['final_loss']:.3f}; 'unfsd' row above)")
  report.emit_json(result, args.json_out)
  return result


if __name__ == "__main__":
  main()
