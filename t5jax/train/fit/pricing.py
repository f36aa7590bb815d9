"""A microbatched step priced over all its microbatches: XLA's cost analysis counts the
microbatch loop's body once, so the step's FLOPs and HBM traffic come from its cost twin,
the same step with the loop unrolled (TrainConfig.unroll_microbatches)."""

from __future__ import annotations

import dataclasses

from t5jax.train.fit import cost, reports
from t5jax.parallel import topology


def cost_twin(config, setting: cost.Setting):
  """`setting` applied to `config` with its microbatch loop unrolled: the same step as
  straight-line code, whose cost analysis counts every microbatch and the one update."""
  return dataclasses.replace(setting.apply(config), unroll_microbatches=True)


def price_microbatches(config, setting: cost.Setting, report: dict, chip: topology.Chip,
                       accelerator_type: str, slices: int) -> tuple[dict | None, dict, bool]:
  """Compiles (or reads from the cache) the cost twin of `setting`'s step (`report`, its
  microbatch loop counted once); (the step's roofline fields from the twin, or None when
  the twin has no cost analysis: libtpu refused it or died; the twin's report; cached)."""
  twin, cached = reports.cached_compile(cost_twin(config, setting), accelerator_type,
                                        slices)
  if not twin.get("compiled", True) or twin.get("crashed"):
    return None, twin, cached
  return microbatch_roofline(report, twin, chip), twin, cached


def microbatch_roofline(report: dict, twin: dict, chip: topology.Chip) -> dict:
  """The roofline of a microbatched step (`report`, its loop counted once) from its cost
  twin's FLOPs and HBM traffic (`twin`: the loop unrolled); the memory stays the step's."""
  from t5jax.train import aot  # pylint: disable=g-import-not-at-top
  whole = {**report, "xla_flops_per_device": twin["xla_flops_per_device"],
           "xla_bytes_accessed_per_device": twin["xla_bytes_accessed_per_device"]}
  roofline = aot.fit_and_roofline(whole, chip)
  return {**{k: v for k, v in roofline.items() if k.startswith("roofline_")
             or k in ("bound", "traffic_known")},
          "xla_flops_per_device": whole["xla_flops_per_device"],
          "xla_bytes_accessed_per_device": whole["xla_bytes_accessed_per_device"],
          "counted_once": False, "roofline_from": "its microbatch loop unrolled"}
