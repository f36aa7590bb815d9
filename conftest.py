"""Test-wide set-up that must happen before JAX is imported anywhere."""
import os

# Eight fake CPU devices, so mesh and sharding tests run on any machine.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("T5JAX_DATA_DIR",
                      os.path.join(os.path.dirname(os.path.abspath(__file__)), ".cache", "tfds"))

import jax  # noqa: E402

# XLA compilation dominates small tests on 2 cores; reuse compiled programs across runs.
jax.config.update("jax_compilation_cache_dir",
                  os.path.join(os.path.expanduser("~"), ".cache", "t5jax", "jax_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
