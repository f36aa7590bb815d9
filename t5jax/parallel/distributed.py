"""Multi-process start-up on jax.distributed (XLA's collectives; nothing home-made).

Explicit flags (coordinator address, process count and id) win; otherwise
`T5JAX_DISTRIBUTED=auto` (or --distributed=auto) lets JAX detect Cloud TPU, SLURM
or Kubernetes by itself. On CPU the processes talk through gloo.
"""

from __future__ import annotations

import os

import jax


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, mode: str | None = None,
               heartbeat_timeout_seconds: int = 100) -> bool:
  """Joins the job if one is configured; returns whether it did.

  Raises:
    ValueError: explicit flags that are incomplete or inconsistent.
  """
  mode = mode or os.environ.get("T5JAX_DISTRIBUTED", "none")
  explicit = [coordinator_address, num_processes, process_id]
  if any(x is not None for x in explicit):
    if any(x is None for x in explicit):
      raise ValueError(
          "Multi-process training needs all of --coordinator_address, --num_processes and "
          "--process_id (or none of them, with T5JAX_DISTRIBUTED=auto on a managed cluster).")
    if not 0 <= process_id < num_processes:
      raise ValueError(f"--process_id={process_id} must be in [0, {num_processes}).")
  elif mode != "auto":
    if mode not in ("none", ""):
      raise ValueError(f"T5JAX_DISTRIBUTED / --distributed={mode!r} must be 'auto' or 'none'.")
    return False
  # CPU devices need a collectives backend across processes; accelerators bring their
  # own (NCCL, ICI), and this setting only concerns the CPU client.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id,
                             heartbeat_timeout_seconds=heartbeat_timeout_seconds)
  return True

