"""Cloud TPU slices by their accelerator-type names, and GPU hosts ("h200-8": one host of 8
H200s), as devices their compilers compile for without the hardware.

`slice_of("v5p-128")` says what the name means (chip, chips, the ICI topology, hosts), and
`devices(...)` asks libtpu for that slice's devices through
`jax.experimental.topologies`: abstract devices that `jit(...).lower(...).compile()` compiles
for with the real TPU compiler, on a machine with no TPU. Only this path loads libtpu
(`pip install 't5jax[tpu]'`).

Chip figures are Google's published ones (per chip: HBM, dense bf16 peak, HBM bandwidth).

GPUs: jax's CUDA plugin compiles without a GPU given XLA's description of the target GPU
(`t5jax/assets/gpu_targets/*.pbtxt`, dumped from the real GPU with `--xla_dump_to`; only
`devices` for a GPU host loads the plugin: `pip install 't5jax[gpu-aot]'`).
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True)
class Chip:
  """One TPU generation's chip."""
  name: str             # Cloud TPU's prefix, e.g. "v5p"
  jax_name: str         # the topology name's prefix jax.experimental.topologies takes
  hbm_bytes: int
  bf16_flops: float     # dense bf16 peak, FLOP/s
  hbm_bandwidth: float  # bytes/s
  cores_per_chip: int   # what the accelerator type's number counts per chip
  dims: int             # ICI torus dimensions (3: v4/v5p, 2: v5e/v6e)
  chips_per_host: int
  ici_bandwidth: float  # bytes/s per chip, all inter-chip links together
  platform: str = "tpu"


GIB = 2**30
CHIPS = {
    # ICI: Cloud TPU's published Gbps per chip (v4 2,400; v5p 4,800; v5e 1,600; v6e 3,584).
    "v4": Chip("v4", "v4", 32 * GIB, 275e12, 1228e9, 2, 3, 4, 300e9),
    "v5p": Chip("v5p", "v5p", 95 * GIB, 459e12, 2765e9, 2, 3, 4, 600e9),
    "v5litepod": Chip("v5litepod", "v5e", 16 * GIB, 197e12, 819e9, 1, 2, 4, 200e9),
    "v6e": Chip("v6e", "v6e", 32 * GIB, 918e12, 1640e9, 1, 2, 4, 448e9),
    # NVIDIA H200 SXM: the HBM its XLA target description reports (150,109,880,320 bytes),
    # the datasheet's dense bf16 peak and HBM bandwidth, NVLink 4's 900 GB/s; 8 to a host.
    "h200": Chip("h200", "h200", 150_109_880_320, 989e12, 4.8e12, 1, 1, 8, 900e9, "gpu"),
}
GPU_TARGETS = "gpu_targets"  # t5jax/assets/gpu_targets/NAME.pbtxt


class TopologyError(ValueError):
  """An unknown accelerator type, or no libtpu; one line naming the fix."""


@dataclasses.dataclass(frozen=True)
class Slice:
  accelerator_type: str
  chip: Chip
  chips: int
  shape: tuple  # ICI shape in chips, e.g. (4, 4, 4)

  @property
  def topology_name(self) -> str:
    if self.chip.platform == "gpu":  # the CUDA plugin's slices x hosts x devices per host
      return f"1x{self.hosts}x{min(self.chips, self.chip.chips_per_host)}"
    return f"{self.chip.jax_name}:{'x'.join(str(d) for d in self.shape)}"

  @property
  def hosts(self) -> int:
    return max(1, self.chips // self.chip.chips_per_host)

  @property
  def chips_per_host_bounds(self) -> tuple:
    if self.chips <= self.chip.chips_per_host and not (self.chip.dims == 2 and
                                                       self.chips == 8):
      return tuple(self.shape) + (1,) * (3 - len(self.shape))
    if self.chip.dims == 2 and self.chips == 8:  # v5e/v6e: one host of 8 chips
      return (2, 4, 1)
    return (2, 2, 1)

  @property
  def wrap(self) -> tuple:
    # Wraparound links close a dimension into a ring on full 4-chip multiples (v4/v5p cubes
    # of 64 chips and up; v5e/v6e 16x16 pods).
    full = (self.chip.dims == 3 and self.chips >= 64) or (self.chip.dims == 2 and
                                                          self.chips >= 256)
    return tuple(full and d % 4 == 0 for d in self.shape) + (False,) * (3 - len(self.shape))


def _shape(chip: Chip, chips: int) -> tuple | None:
  """The ICI shape of a slice of `chips` chips, most cubic first, as Cloud TPU makes them
  (a GPU host's NVLink domain: its GPUs in a row)."""
  if chip.platform == "gpu":
    return (chips,) if chips in (1, 2, 4) or chips % chip.chips_per_host == 0 else None
  if chip.dims == 2:
    known = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8),
             128: (8, 16), 256: (16, 16)}
    return known.get(chips)
  if chips == 4:
    return (2, 2, 1)
  if chips < 8 or chips & (chips - 1):
    return None
  dims = [2, 2, 2]
  while math.prod(dims) < chips:
    dims[dims.index(min(dims))] *= 2
  return tuple(sorted(dims))


def known_types() -> list[str]:
  out = []
  for chip in CHIPS.values():
    sizes = ([1, 8, 16, 64] if chip.platform == "gpu" else [4, 8, 16, 32, 64, 128, 256]
             if chip.dims == 2 else [4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096])
    out += [f"{chip.name}-{n * chip.cores_per_chip}" for n in sizes if _shape(chip, n)]
  return out


def slice_of(accelerator_type: str) -> Slice:
  """The slice a Cloud TPU accelerator type names ("v4-32", "v5litepod-16", "v5p-128").

  Raises:
    TopologyError: (one line) for a name that is not a known type, listing examples.
  """
  prefix, _, number = accelerator_type.rpartition("-")
  chip = CHIPS.get(prefix)
  shape = None
  if chip is not None and number.isdigit() and int(number) % chip.cores_per_chip == 0:
    chips = int(number) // chip.cores_per_chip
    shape = _shape(chip, chips)
  if shape is None:
    examples = ", ".join(t for t in known_types() if t.split("-")[1] in ("8", "16", "128")
                         and CHIPS[t.split("-")[0]].platform == "tpu")
    tpus = ", ".join(c for c, chip in CHIPS.items() if chip.platform == "tpu")
    gpus = ", ".join(c for c, chip in CHIPS.items() if chip.platform == "gpu")
    raise TopologyError(
        f"unknown accelerator type {accelerator_type!r}; use a Cloud TPU type of {tpus}, e.g. "
        f"{examples} (v4 and v5p count TensorCores, two a chip), or a GPU host of {gpus}, e.g. "
        "h200-8 (GPUs: 1, 2, 4 or a multiple of 8)")
  return Slice(accelerator_type, chip, chips, shape)


def devices(tpu_slice: Slice, num_slices: int = 1) -> list:
  """libtpu's abstract devices of `num_slices` such slices (loads libtpu: this path only).

  Raises:
    TopologyError: (one line) when libtpu is not installed or does not know the chip.
  """
  if tpu_slice.chip.platform == "gpu":
    return _gpu_devices(tpu_slice, num_slices)
  import importlib.util  # pylint: disable=g-import-not-at-top
  if importlib.util.find_spec("libtpu") is None:
    raise TopologyError(
        "compiling for a TPU slice needs libtpu, the TPU compiler: pip install 't5jax[tpu]' "
        "(it pins the libtpu that matches jax)")
  import os  # pylint: disable=g-import-not-at-top
  # Compiling touches no chip: two compiles at once (a search beside a benchmark) must not
  # trip libtpu's one-process lock file.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  try:
    desc = topologies.get_topology_desc(
        platform="tpu", topology_name=tpu_slice.topology_name,
        chips_per_host_bounds=tpu_slice.chips_per_host_bounds, num_slices=num_slices,
        wrap=tpu_slice.wrap)
  except Exception as e:  # noqa: BLE001 - libtpu's own message, on one line
    raise TopologyError(
        f"libtpu cannot make {tpu_slice.accelerator_type} ({tpu_slice.topology_name}, "
        f"{num_slices} slice(s)): {' '.join(str(e).split())[:300]}") from None
  return list(desc.devices)


def _gpu_devices(host: Slice, num_slices: int) -> list:
  """The CUDA plugin's compile-only devices for `host` (loads the plugin: this path only)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  if importlib.util.find_spec("jax_plugins.xla_cuda12") is None:
    raise TopologyError(
        "compiling for a GPU host needs jax's CUDA plugin and ptxas: pip install "
        "'t5jax[gpu-aot]' (it pins the plugin that matches jax)")
  if num_slices != 1:
    raise TopologyError(f"--slices={num_slices}: a GPU target is one job of "
                        f"{host.chip.name}-N GPUs; name the GPUs in N instead")
  # XLA's Triton GEMMs find no tile sizes for some of the step's matmuls without a GPU to
  # autotune on ("Couldn't find output tile sizes"); cuBLAS's are used instead. Read when
  # the plugin first compiles, so set before that.
  flag = "--xla_gpu_enable_triton_gemm=false"
  if flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
  import pathlib  # pylint: disable=g-import-not-at-top
  description = (pathlib.Path(__file__).resolve().parents[1] / "assets" / GPU_TARGETS /
                 f"{host.chip.name}.pbtxt").read_text()
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  try:
    desc = topologies.get_topology_desc(host.chip.name, "cuda", target_config=description,
                                        topology=host.topology_name)
  except Exception as e:  # noqa: BLE001 - the plugin's own message, on one line
    raise TopologyError(
        f"jax's CUDA plugin cannot make {host.accelerator_type} ({host.topology_name}): "
        f"{' '.join(str(e).split())[:300]}") from None
  return list(desc.devices)
