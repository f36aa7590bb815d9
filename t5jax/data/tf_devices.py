"""Keeps TensorFlow (used only for input pipelines) off the accelerators JAX needs."""

import functools
import logging

import tensorflow as tf


@functools.cache
def hide_accelerators_from_tf() -> None:
  """Makes GPUs and TPUs invisible to TensorFlow; call before any dataset is built.

  Without this TensorFlow grabs most of the GPU memory on first use.
  """
  for kind in ("GPU", "TPU"):
    try:
      tf.config.set_visible_devices([], kind)
    except ValueError:
      pass  # No device of this kind on this machine.
    except RuntimeError as e:
      # TF initialised its devices before we got here; it may hold accelerator memory.
      logging.warning("could not hide %s devices from TensorFlow: %s", kind, e)
