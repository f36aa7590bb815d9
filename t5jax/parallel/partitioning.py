"""Device mesh, the one table of logical-axis rules, and host-to-global batches.

The mesh has three axes whose sizes are configuration:
  data    pure data parallelism (parameters replicated);
  fsdp    data parallelism with parameters and optimizer state sharded (ZeRO-3);
  tensor  Megatron-style tensor parallelism over heads, MLP width and vocabulary.
The batch is split over data x fsdp. Axis types are Auto: shardings are given to
jit and as logical constraints, and the compiler propagates the rest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_MESH_AXES = ("data", "fsdp")

# Logical axis -> mesh axis. A logical name may appear twice: flax takes the first
# rule whose mesh axis is still free in that array, so parameters shard `embed`
# over fsdp while activations (whose batch already uses fsdp) keep it whole.
LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", BATCH_MESH_AXES),
    ("embed", "fsdp"),
    ("embed", None),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("kv", None),
    ("length", None),
    ("relpos_buckets", None),
    ("layers", None),
    ("adapter", None),
    ("lora", None),
    ("prompt", None),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Mesh axis sizes; one of them may be -1, meaning all remaining devices.

  `slices` > 1 builds a multi-slice (or multi-host) mesh: the data axis is split
  into an outer part across slices (TPU slices over DCN, or processes when the
  devices have no slice index), and fsdp and tensor stay inside a slice, on the
  fast links. `data` must be a multiple of `slices`.
  """
  data: int = -1
  fsdp: int = 1
  tensor: int = 1
  slices: int = 1

  def resolve(self, num_devices: int) -> tuple[int, int, int]:
    """Returns the concrete (data, fsdp, tensor) shape for `num_devices` devices."""
    shape = [self.data, self.fsdp, self.tensor]
    if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
      raise ValueError(
          f"Mesh {tuple(shape)} is invalid: sizes must be positive, with at most one -1 "
          "(meaning 'the remaining devices').")
    known = math.prod(s for s in shape if s != -1)
    if -1 in shape:
      if num_devices % known:
        raise ValueError(
            f"Mesh {tuple(shape)} cannot fill {num_devices} devices: {num_devices} is not "
            f"divisible by {known}; choose axis sizes whose product divides {num_devices}.")
      shape[shape.index(-1)] = num_devices // known
    if math.prod(shape) > num_devices:
      raise ValueError(
          f"Mesh data={shape[0]}, fsdp={shape[1]}, tensor={shape[2]} needs "
          f"{math.prod(shape)} devices but only {num_devices} are available; shrink the "
          "mesh or, on CPU, set XLA_FLAGS=--xla_force_host_platform_device_count=N.")
    return tuple(shape)


def _hybrid_device_array(shape, slices: int, devices):
  """Devices ordered so the outer `slices` part of the data axis crosses slices."""
  from jax.experimental import mesh_utils
  # TPU slices have distinct slice indices; elsewhere (GPU/CPU hosts) processes are the
  # granules that the slow network connects.
  by_slice = len({getattr(d, "slice_index", 0) for d in devices}) > 1
  granules = {d.slice_index if by_slice else d.process_index for d in devices}
  if shape[0] % slices or len(granules) != slices:
    raise ValueError(
        f"MeshConfig.slices={slices} needs data={shape[0]} divisible by it and the devices in "
        f"{slices} {'slices' if by_slice else 'processes'}, but they are in {len(granules)}.")
  per_slice = (shape[0] // slices,) + tuple(shape[1:])
  return mesh_utils.create_hybrid_device_mesh(per_slice, (slices, 1, 1), devices,
                                              process_is_granule=not by_slice)


def make_mesh(mesh_config: MeshConfig = MeshConfig(), devices=None) -> Mesh:
  """Builds the (data, fsdp, tensor) mesh over `devices` (default: all devices)."""
  devices = jax.devices() if devices is None else list(devices)
  shape = mesh_config.resolve(len(devices))
  n = math.prod(shape)
  device_array = np.asarray(devices[:n]).reshape(shape)
  if mesh_config.slices > 1:
    device_array = _hybrid_device_array(shape, mesh_config.slices, devices[:n])
  elif n == len(devices):
    try:  # topology-aware order where the platform offers one (TPU, GPU)
      from jax.experimental import mesh_utils
      device_array = mesh_utils.create_device_mesh(shape, devices=devices)
    except (ValueError, NotImplementedError, AssertionError):
      pass
  return Mesh(device_array, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


@contextlib.contextmanager
def sharding_context(mesh: Mesh, rules=LOGICAL_AXIS_RULES):
  """Activates the mesh and the rules, so the model's logical constraints apply."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def logical_to_sharding(logical_tree, mesh: Mesh, rules=LOGICAL_AXIS_RULES):
  """Maps a tree of logical PartitionSpecs to NamedShardings on `mesh`."""
  return nn.logical_to_mesh_sharding(logical_tree, mesh, rules)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dimension split over data x fsdp, the rest whole."""
  return NamedSharding(mesh, PartitionSpec(BATCH_MESH_AXES))


def batch_shards(mesh: Mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def check_batch_size(global_batch_size: int, mesh: Mesh, microbatches: int = 1) -> None:
  """Raises a one-line error unless every microbatch splits evenly over the mesh."""
  shards = batch_shards(mesh)
  if global_batch_size % microbatches:
    raise ValueError(
        f"Batch size {global_batch_size} is not divisible by microbatches={microbatches}; "
        "pick a batch size that is a multiple of the number of microbatches.")
  per_micro = global_batch_size // microbatches
  if per_micro % shards:
    raise ValueError(
        f"Batch size {global_batch_size} ({microbatches} microbatch(es) of {per_micro}) is "
        f"not divisible by the mesh's data x fsdp = {shards} devices; use a multiple of "
        f"{shards * microbatches} or change the mesh.")
  if global_batch_size % jax.process_count():
    raise ValueError(
        f"Batch size {global_batch_size} is not divisible by the {jax.process_count()} "
        "processes; each process feeds an equal share.")


def host_batch_to_global(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's rows into global arrays sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  out = {}
  for name, local in local_batch.items():
    global_shape = (local.shape[0] * jax.process_count(),) + local.shape[1:]
    out[name] = jax.make_array_from_process_local_data(sharding, local, global_shape)
  return out


def _path_str(path) -> str:
  return jax.tree_util.keystr(path)


def opt_state_shardings(abstract_opt_state, abstract_params, param_shardings, mesh: Mesh):
  """Shards each optimizer-state leaf like the parameter it shadows.

  Optimizer states embed the parameter tree (Adam's moments, Adafactor's
  factored rows and columns), so a leaf whose path ends with a parameter's path
  and has that parameter's shape takes its sharding; anything else (counts,
  factored statistics, scalars) is small and replicated.
  """
  by_path = {}
  for (path, p), s in zip(jax.tree_util.tree_flatten_with_path(abstract_params)[0],
                          jax.tree.leaves(param_shardings)):
    by_path[_path_str(path)] = (p.shape, s)

  def choose(path, leaf):
    key = _path_str(path)
    for param_path, (shape, sharding) in by_path.items():
      if param_path in key and tuple(leaf.shape) == tuple(shape):
        return sharding
    return replicated(mesh)

  return jax.tree_util.tree_map_with_path(choose, abstract_opt_state)
