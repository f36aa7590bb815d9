"""SIGTERM/SIGINT become a request to save at the next step boundary and exit; a process
that cannot write the run directory stops every process at the next step boundary."""

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
    self.failed_anywhere = False

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

  def requested(self, failed: bool = False) -> bool:
    """True once any process has been signalled (a collective when multi-process).

    `failed`: this process cannot go on (it could not write the run directory); afterwards
    `self.failed_anywhere` says whether any process said so, so that all of them stop
    together instead of the others waiting in the next step's collectives."""
    if jax.process_count() == 1:
      self.failed_anywhere = failed
      return self._flag
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(np.asarray([self._flag, failed], np.int32))
    flags = np.asarray(flags).reshape(-1, 2)
    self.failed_anywhere = bool(np.any(flags[:, 1]))
    return bool(np.any(flags[:, 0]))
