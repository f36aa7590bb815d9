"""t5jax: T5-style text-to-text multi-task learning in JAX/Flax.

The package flows in stages; each folder may import the ones below it, never above
(tests/test_layout.py holds the rule):

  cli/       the `t5jax` command: imports anything
  train/     the training loop, the jitted step, losses, optimizers, AOT compile
  decode/    greedy / sampling / beam decoding, the Predictor, evaluation
  interop/   Hugging Face checkpoints in and out
  model/ data/ parallel/   the ground: the Flax T5, SeqIO tasks and batches, the mesh
  store/     the example store (data/ stands on it; it imports no SeqIO, TensorFlow or stage)
  checkpoint.py  Orbax checkpoints, used by train/, decode/ and interop/ alike
  config.py      gin files and bindings (read only by cli/ and train/)
  fs.py          a run's files on local disk or gs://, below everything (imports no t5jax)
"""

import glob as _glob
import importlib.util as _importlib_util
import os as _os
import sys as _sys


def _skip_absent_accelerators() -> None:
  """With a compile-only backend installed on a machine without its hardware (libtpu,
  `t5jax[tpu]`; jax's CUDA plugin, `t5jax[gpu-aot]`; for `t5jax compile --topology`), jax
  would probe for the hardware at start-up (seconds, and the libraries' warnings): name the
  platforms there are. Hardware that is there (/dev/accel*, /dev/vfio for a TPU,
  /dev/nvidia* for a GPU) and an explicit JAX_PLATFORMS are left alone."""
  if _os.environ.get("JAX_PLATFORMS") is not None:
    return
  tpu = bool(_glob.glob("/dev/accel*") or _glob.glob("/dev/vfio/[0-9]*"))
  gpu = bool(_glob.glob("/dev/nvidia[0-9]*"))
  installed = lambda name: _importlib_util.find_spec(name) is not None
  if not ((installed("libtpu") and not tpu) or (installed("jax_plugins.xla_cuda12") and
                                                  not gpu)):
    return
  platforms = ("tpu," if tpu else "") + ("cuda," if gpu else "") + "cpu"
  _os.environ["JAX_PLATFORMS"] = platforms
  if "jax" in _sys.modules:  # jax read the variable when imported: tell its config too
    _sys.modules["jax"].config.update("jax_platforms", platforms)


_skip_absent_accelerators()
