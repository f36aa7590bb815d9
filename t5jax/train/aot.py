"""`t5jax compile`: compile the train step ahead of time and report per-device memory and
FLOPs, so a user can check that a model fits before paying for the hardware.

Targets: N fake CPU devices (XLA:CPU's compiler: an estimate), a Cloud TPU slice
(`topology.devices`: libtpu's own compiler, the figures a pod will see, with the chip's HBM,
a verdict on fit and a roofline step time), or a GPU host (jax's CUDA plugin, compiling
for XLA's description of the GPU). The path is abstract end to end: shapes and
shardings only, no array is ever placed on the target devices."""

from __future__ import annotations

import re
import time
import types

import jax
import jax.numpy as jnp
import numpy as np

from t5jax.train import step_builder
from t5jax.parallel import partitioning, topology
from t5jax.data import pipeline
from t5jax.model.flops import model_flops_per_step


def abstract_batch(batch_size: int, inputs_length: int, targets_length: int, mesh):
  """The pipeline's batch (pipeline.MODEL_FEATURES) as shapes, sharded over the batch."""
  sharding = partitioning.batch_sharding(mesh)
  length = lambda k: inputs_length if k.startswith("encoder_") else targets_length
  return {k: jax.ShapeDtypeStruct((batch_size, length(k)), jnp.int32, sharding=sharding)
          for k in pipeline.MODEL_FEATURES}


def compile_train_step(config, devices=None) -> dict:
  """Lowers and compiles `config`'s train step (the one the run trains with:
  step_builder.build) for `devices` (default: this host's); returns a report with
  per-device bytes, FLOPs and the time it took."""
  devices = jax.devices() if devices is None else devices  # the backend's start, untimed
  start = time.time()
  setup = step_builder.build(config, devices)
  mesh, model, lengths = setup.mesh, setup.model, setup.lengths
  with partitioning.sharding_context(mesh):
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            setup.abstract, setup.shardings)
    batch = abstract_batch(config.batch_size, *lengths, mesh)
    lowered = setup.jit_step().lower(abstract, batch)
    try:
      compiled, refused = lowered.compile(), None
    except Exception as e:  # noqa: BLE001 - libtpu refuses a step over the chip's HBM
      refused = _over_hbm(e)
      if refused is None:
        raise
  seconds = time.time() - start
  if refused is None:
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  else:
    # What the compiler said it needed; the arguments are the state's and the batch's shards.
    args = _shard_bytes(abstract) + _shard_bytes(batch)
    memory = types.SimpleNamespace(argument_size_in_bytes=args, output_size_in_bytes=0,
                                   temp_size_in_bytes=refused, alias_size_in_bytes=0)
    cost = {}
  params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params))
  report = {
      "model": config.model, "parameters": params, "mesh": dict(mesh.shape),
      "devices": mesh.size, "batch": config.batch_size, "lengths": list(lengths),
      "compile_seconds": round(seconds, 1),
      "fused_cross_entropy": config.loss.fused_cross_entropy,
      "scan_layers": bool(model.config.scan_layers),
      "microbatches": config.microbatches,
      # XLA's cost analysis counts a loop's body once: scanned layers, or the microbatch
      # loop, make its FLOPs and traffic a fraction of the step's.
      "counted_once": bool(model.config.scan_layers) or (config.microbatches > 1
                                                         and not config.unroll_microbatches),
      "xla_flops_per_device": float(cost.get("flops", float("nan"))) if cost else float("nan"),
      "xla_bytes_accessed_per_device": float(cost.get("bytes accessed", float("nan")))
                                       if cost else float("nan"),
      "platform": mesh.devices.flat[0].platform,
      "device_kind": getattr(mesh.devices.flat[0], "device_kind", ""),
      "model_flops_per_device": model_flops_per_step(
          model.config, config.batch_size, *lengths)["total"] / mesh.size,
  }
  for field in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
                "alias_size_in_bytes", "generated_code_size_in_bytes"):
    report[field] = int(getattr(memory, field, 0) or 0)
  # Donated state aliases its outputs, so peak = arguments + temporaries + outputs
  # that are not aliases of arguments.
  report["compiled"] = refused is None
  report["peak_bytes_per_device"] = (report["argument_size_in_bytes"]
                                     + report["temp_size_in_bytes"]
                                     + report["output_size_in_bytes"]
                                     - report["alias_size_in_bytes"])
  return report


def compile_decode(config, devices=None, accelerator_type: str | None = None,
                   slices: int = 1) -> dict:
  """Compiles what `t5jax eval` and `infer` run for one batch, for `devices` (default: this
  host's) or a TPU slice: decoding with EvalConfig.strategy a batch of
  EvalConfig.batch_size rows of EvalConfig.inputs_length tokens into targets_length,
  with the parameters in the model's param_dtype (`--param_dtype bfloat16` at inference:
  ModelSettings.param_dtype = 'bfloat16') sharded as in training.
  Returns per-device bytes (and, for a slice, whether they fit the chip's HBM)."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from t5jax.decode import decoding  # pylint: disable=g-import-not-at-top
  from t5jax.model import param_tree  # pylint: disable=g-import-not-at-top
  tpu_slice = None
  if accelerator_type is not None:
    tpu_slice = topology.slice_of(accelerator_type)
    devices = topology.devices(tpu_slice, slices)
  mesh = partitioning.make_mesh(config.mesh, devices)
  model = step_builder.build_model(config)
  model = type(model)(model.config.replace(dropout_rate=0.0))
  ev, strategy = config.eval, config.eval.strategy
  shards = partitioning.batch_shards(mesh)
  rows = -(-ev.batch_size // shards) * shards
  start = time.time()
  with partitioning.sharding_context(mesh):
    boxed = param_tree.abstract_boxed_params(model)
    shardings = partitioning.logical_to_sharding(nn.get_partition_spec(boxed), mesh)
    params = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                          param_tree.abstract_params(model), shardings)
    tokens = jax.ShapeDtypeStruct((rows, ev.inputs_length), jnp.int32,
                                  sharding=partitioning.batch_sharding(mesh))
    fn = jax.jit(lambda p, t: decoding.generate(model, p, t, max_decode_length=ev.targets_length,
                                                strategy=strategy))
    memory = fn.lower(params, tokens).compile().memory_analysis()
  report = {
      "what": "decode", "model": config.model, "mesh": dict(mesh.shape), "devices": mesh.size,
      "batch": rows, "lengths": [ev.inputs_length, ev.targets_length],
      "method": strategy.method, "num_beams": strategy.num_beams if strategy.method == "beam"
      else 1, "param_dtype": model.config.param_dtype,
      "parameters": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)),
      "parameter_bytes_per_device": _shard_bytes(params),
      "compile_seconds": round(time.time() - start, 1),
  }
  for field in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
                "alias_size_in_bytes"):
    report[field] = int(getattr(memory, field, 0) or 0)
  report["peak_bytes_per_device"] = (report["argument_size_in_bytes"]
                                     + report["temp_size_in_bytes"]
                                     + report["output_size_in_bytes"]
                                     - report["alias_size_in_bytes"])
  if tpu_slice is not None:
    hbm = tpu_slice.chip.hbm_bytes
    report.update(accelerator_type=accelerator_type, chip=tpu_slice.chip.name,
                  hbm_bytes_per_chip=hbm, fits=report["peak_bytes_per_device"] <= hbm,
                  headroom=1.0 - report["peak_bytes_per_device"] / hbm)
  return report


def format_decode_report(r: dict) -> str:
  gib = lambda b: f"{b / 2**30:.2f} GiB"
  what = (f"beam search ({r['num_beams']} beams)" if r["method"] == "beam" else r["method"])
  lines = [
      f"{r['model']} decoding: {r['parameters']:,} parameters ({r['param_dtype']}) on mesh "
      f"{r['mesh']} ({r['devices']} devices), {what}, batch {r['batch']}, lengths "
      f"{r['lengths']}; compiled in {r['compile_seconds']} s",
      f"  per device: parameters {gib(r['parameter_bytes_per_device'])}, arguments "
      f"{gib(r['argument_size_in_bytes'])}, temporaries {gib(r['temp_size_in_bytes'])} "
      f"(the KV cache, the encoder's output, the logits), peak "
      f"~{gib(r['peak_bytes_per_device'])}"]
  if "accelerator_type" in r:
    lines.append(
        f"  {r['accelerator_type']}, libtpu's compiler: peak {gib(r['peak_bytes_per_device'])} "
        f"of {gib(r['hbm_bytes_per_chip'])} HBM per chip: " +
        (f"FITS with {r['headroom']:.0%} headroom" if r["fits"] else
         f"DOES NOT FIT ({-r['headroom']:.0%} over): lower EvalConfig.batch_size, use "
         "bfloat16 parameters, more FSDP or tensor parallelism, or a larger slice"))
  return "\n".join(lines)


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40, "P": 2**50}


def _over_hbm(error: Exception) -> int | None:
  """The temporaries' bytes libtpu says a step needs when it refuses it for HBM, else None."""
  match = re.search(r"RESOURCE_EXHAUSTED.*?HLO temporaries \(([\d.]+)([KMGTP]?)\)", str(error),
                    re.S)
  if match is None:
    return None
  return int(float(match.group(1)) * _UNITS[match.group(2)])


def _shard_bytes(tree) -> int:
  """Bytes per device of a tree of sharded ShapeDtypeStructs."""
  return sum(int(np.prod(x.sharding.shard_shape(x.shape))) * np.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(tree))


def compile_for_slice(config, accelerator_type: str, slices: int = 1) -> dict:
  """Compiles `config`'s train step with libtpu for `slices` slices of `accelerator_type`;
  the report adds the chip's HBM, whether the step fits, and a roofline step time.

  Raises:
    topology.TopologyError: (one line) an unknown type, or libtpu missing.
  """
  tpu_slice = topology.slice_of(accelerator_type)
  devices = topology.devices(tpu_slice, slices)
  report = compile_train_step(config, devices=devices)
  chip = tpu_slice.chip
  report.update({"accelerator_type": accelerator_type, "slices": slices,
                 "topology": tpu_slice.topology_name, "chips": tpu_slice.chips * slices,
                 "hosts": tpu_slice.hosts * slices})
  report.update(fit_and_roofline(report, chip))
  return report


def fit_and_roofline(report: dict, chip: topology.Chip) -> dict:
  """The step's fit in the chip's HBM and its roofline time at the chip's peaks.

  Compute time counts the larger of the model's FLOPs and XLA's (XLA counts a scanned
  body once; the model's count omits remat's recomputation); memory time counts XLA's bytes
  accessed at the HBM bandwidth. The step takes at least the larger: MFU is at most
  model FLOPs / (that time x peak). Collectives are not in it.
  """
  peak = report["peak_bytes_per_device"]
  xla_flops = report["xla_flops_per_device"]
  # A deviceless GPU compile gives no cost analysis: the bound is then compute alone.
  flops = max(report["model_flops_per_device"], 0.0 if np.isnan(xla_flops) else xla_flops)
  compute_s = flops / chip.bf16_flops
  traffic = report.get("xla_bytes_accessed_per_device", float("nan"))
  memory_s = (0.0 if np.isnan(traffic) else traffic) / chip.hbm_bandwidth
  step_s = max(compute_s, memory_s)
  return {
      "chip": chip.name, "hbm_bytes_per_chip": chip.hbm_bytes,
      "fits": peak <= chip.hbm_bytes, "headroom": 1.0 - peak / chip.hbm_bytes,
      "roofline_compute_s": compute_s, "roofline_memory_s": memory_s,
      "roofline_step_s": step_s, "bound": "compute" if compute_s >= memory_s else "memory",
      "traffic_known": not np.isnan(traffic),
      "roofline_mfu": report["model_flops_per_device"] / (step_s * chip.bf16_flops)
                      if step_s else float("nan"),
  }


def format_report(r: dict) -> str:
  gib = lambda b: f"{b / 2**30:.2f} GiB"
  compiler = "the CUDA compiler" if r.get("platform") == "gpu" else "libtpu's compiler"
  return "\n".join([
      f"{r['model']}: {r['parameters']:,} parameters on mesh {r['mesh']} ({r['devices']} "
      f"devices), batch {r['batch']}, lengths {r['lengths']}; compiled in "
      f"{r['compile_seconds']} s; cross-entropy "
      f"{'fused' if r['fused_cross_entropy'] else 'from full logits'}",
      f"  per device: arguments {gib(r['argument_size_in_bytes'])} (parameters + optimizer "
      f"state + batch shard), temporaries {gib(r['temp_size_in_bytes'])}, "
      f"peak ~{gib(r['peak_bytes_per_device'])}",
      f"  per device: {r['model_flops_per_device'] / 1e12:.3f} model TFLOP per step (matmuls, "
      "forward x 3); " + (
          "XLA gives no count" if np.isnan(r["xla_flops_per_device"]) else
          f"XLA counts {r['xla_flops_per_device'] / 1e12:.3f} (the body of a scan, of layers "
          "or of fused cross-entropy blocks, is counted once; remat recomputation is "
          "included)"),
  ] + ([
      f"  {r['accelerator_type']} x {r['slices']} ({r['chips']} {r['chip']} "
      f"{'GPUs' if r['platform'] == 'gpu' else 'chips'}, topology {r['topology']}, "
      f"{r['hosts']} host{'s' if r['hosts'] > 1 else ''}), "
      f"{compiler}: peak "
      f"{gib(r['peak_bytes_per_device'])} of {gib(r['hbm_bytes_per_chip'])} HBM per chip: "
      + (f"FITS with {r['headroom']:.0%} headroom" if r["fits"] else
         f"DOES NOT FIT ({-r['headroom']:.0%} over"
         + ("" if r.get("compiled", True) else
            "; libtpu refused the step, naming the temporaries it needs")
         + "): try ModelSettings.remat_policy = 'full' and ModelSettings.scan_layers = True, "
         "TrainConfig.microbatches, more FSDP, or a larger slice"),
      f"  roofline: {r['roofline_step_s'] * 1e3:.1f} ms per step ({r['bound']}-bound: compute "
      f"{r['roofline_compute_s'] * 1e3:.1f} ms at the bf16 peak, HBM traffic "
      + (f"{r['roofline_memory_s'] * 1e3:.1f} ms), " if r.get("traffic_known", True) else
         "unknown: XLA's GPU compiler gives no cost analysis without a GPU), ")
      + ("no MFU bound: XLA counts a loop's body once (scanned layers, microbatches), so "
         "its FLOPs and traffic are a fraction of the step's"
         + (" (--gin.TrainConfig.unroll_microbatches=True compiles the loop unrolled, "
            "counted whole)" if r.get("microbatches", 1) > 1 and not r.get("scan_layers")
            else "")
         if r.get("counted_once", r.get("scan_layers")) else "no MFU bound without the HBM traffic"
         if not r.get("traffic_known", True) else f"MFU at most {r['roofline_mfu']:.0%}"),
  ] if "accelerator_type" in r else []))
