"""Which devices a program is built for: the CPU-only layouts and loops ask here."""

from __future__ import annotations

import jax


def target_devices() -> tuple[str, int]:
  """(platform, device count) of what the program is built for: the current mesh's
  (partitioning.sharding_context), else this process's devices. A step compiled here for
  a TPU slice or a GPU host is built for those devices, not for this host's CPU."""
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty and mesh.abstract_device is not None:
    return mesh.abstract_device.platform, mesh.size
  return jax.default_backend(), jax.device_count()


def on_one_cpu_device() -> bool:
  """True on a single CPU device: the CPU-only layouts and loops apply (none would
  on an accelerator, and a loop over a batch axis sharded over devices gathers it)."""
  return target_devices() == ("cpu", 1)
