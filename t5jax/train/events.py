"""TensorBoard event files, written through t5jax.fs (local disk or gs://).

An event file is a sequence of TFRecords, each an `Event` protocol buffer. tensorboardX's
own writer opens local files, and in a bucket re-uploads the whole file at every flush from
a background thread (it needs google-cloud-storage besides); here each `add_scalars` appends
its records at once (one composed object in a bucket), in the caller's thread, so a failure
is the caller's to report and `tensorboard --logdir gs://...` reads the file as it grows.
"""

from __future__ import annotations

import socket
import struct
import time

import google_crc32c
import numpy as np
# TensorFlow's own protocol buffers: TensorFlow is loaded already (SeqIO runs on it), where
# tensorboardX's would load its writer and with it PyTorch: seconds of every run's start.
from tensorflow.core.framework import summary_pb2
from tensorflow.core.util import event_pb2

from t5jax import fs


def masked_crc32c(data: bytes) -> int:
  """TFRecord's checksum: CRC-32C, rotated right by 15 bits plus a constant."""
  crc = google_crc32c.value(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _record(data: bytes) -> bytes:
  """One TFRecord: length, its CRC, the data, its CRC."""
  header = struct.pack("Q", len(data))
  return (header + struct.pack("I", masked_crc32c(header)) + data
          + struct.pack("I", masked_crc32c(data)))


class EventsFile:
  """One events file in `logdir`, named as TensorBoard and tensorboardX name them."""

  def __init__(self, logdir: str):
    now = time.time()
    self.path = fs.join(logdir, f"events.out.tfevents.{int(now):010d}.{socket.gethostname()}")
    first = event_pb2.Event(wall_time=now, file_version="brain.Event:2")
    fs.append_bytes(self.path, _record(first.SerializeToString()))

  def add_scalars(self, step: int, scalars: dict) -> None:
    """Appends one event of the finite numbers in `scalars` (tag -> value) at `step`."""
    values = [summary_pb2.Summary.Value(tag=tag, simple_value=float(value))
              for tag, value in scalars.items()
              if isinstance(value, (int, float)) and np.isfinite(value)]
    if not values:
      return
    event = event_pb2.Event(wall_time=time.time(), step=int(step),
                            summary=summary_pb2.Summary(value=values))
    fs.append_bytes(self.path, _record(event.SerializeToString()))
