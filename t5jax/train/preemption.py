"""SIGTERM/SIGINT become a request to save at the next step boundary and exit."""

from __future__ import annotations

import signal

import jax
import numpy as np


class PreemptionGuard:
  """Context manager: while active, SIGTERM and SIGINT set a flag instead of
  killing the process; `requested()` tells the loop (all processes agree)."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self._flag = False
    self._previous = {}
    self.signal_name = None

  def _handle(self, signum, frame):
    del frame
    self._flag = True
    self.signal_name = signal.Signals(signum).name

  def __enter__(self):
    for sig in self.SIGNALS:
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    return False

  def requested(self) -> bool:
    """True once any process has been signalled (a collective when multi-process)."""
    if jax.process_count() == 1:
      return self._flag
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(np.asarray(self._flag, np.int32))
    return bool(np.any(flags))
