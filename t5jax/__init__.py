"""t5jax: T5-style text-to-text multi-task learning in JAX/Flax.

The package flows in stages; each folder may import the ones below it, never above
(tests/test_layout.py holds the rule):

  cli/       the `t5jax` command: imports anything
  train/     the training loop, the jitted step, losses, optimizers, AOT compile
  decode/    greedy / sampling / beam decoding, the Predictor, evaluation
  interop/   Hugging Face checkpoints in and out
  model/ data/ parallel/   the ground: the Flax T5, SeqIO tasks and batches, the mesh
  checkpoint.py  Orbax checkpoints, used by train/, decode/ and interop/ alike
  config.py      gin files and bindings (read only by cli/ and train/)
"""

import glob as _glob
import importlib.util as _importlib_util
import os as _os
import sys as _sys


def _skip_absent_tpu() -> None:
  """With libtpu installed (`t5jax[tpu]`, for `t5jax compile --topology`) on a machine without
  a TPU, jax would probe for one at start-up (seconds, and libtpu's warnings): name the
  platforms there are.
  A TPU VM (/dev/accel*, /dev/vfio) and an explicit JAX_PLATFORMS are left alone."""
  if _os.environ.get("JAX_PLATFORMS") is not None or \
      _importlib_util.find_spec("libtpu") is None or \
      _glob.glob("/dev/accel*") or _glob.glob("/dev/vfio/[0-9]*"):
    return
  platforms = "cuda,cpu" if _glob.glob("/dev/nvidia[0-9]*") else "cpu"
  _os.environ["JAX_PLATFORMS"] = platforms
  if "jax" in _sys.modules:  # jax read the variable when imported: tell its config too
    _sys.modules["jax"].config.update("jax_platforms", platforms)


_skip_absent_tpu()
