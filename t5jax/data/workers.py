"""Worker processes for the batch pipeline: each fills a fixed group of the host's rows.

Rows are independent streams (`packing`), so W workers split the host's rows into W
contiguous groups and each produces its group's part of every batch, in step order. A worker
imports numpy and t5jax's numpy-only data modules (no TensorFlow, no SeqIO, no JAX), and
opens the task stores memory-mapped, so it starts in about a second and shares the data pages.
Each is a plain `python -m t5jax.data.workers` subprocess (not multiprocessing's spawn, which
would re-import the parent's main script): its configuration comes as JSON on stdin and each
batch goes back on stdout as raw bytes (features, row validity, positions), length-prefixed.
Nothing is pickled.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from typing import BinaryIO, Iterator, Sequence

import numpy as np

from t5jax.data import example_ops
from t5jax.data import packing

_BATCH, _ERROR = b"B", b"E"


def _layout(num_rows: int, lengths: dict, example_ids: bool, num_tasks: int):
  """[(name, shape, dtype)] of one message after its tag."""
  fields = [(k, (num_rows, lengths["inputs"]), np.int32) for k in packing.ENCODER_FEATURES]
  fields += [(k, (num_rows, lengths["targets"]), np.int32) for k in packing.DECODER_FEATURES]
  if example_ids:
    fields.append((packing.EXAMPLE_IDS, (num_rows, lengths["targets"]), np.int32))
  fields.append(("_valid", (num_rows,), np.int32))
  fields.append(("_state", (num_rows, 1 + num_tasks), np.int64))
  return fields


def _send(out: BinaryIO, tag: bytes, parts: Sequence) -> None:
  """Writes one message: its size, the tag, then each part's bytes (no copies)."""
  views = [memoryview(np.ascontiguousarray(p)).cast("B") for p in parts]
  out.write(struct.pack("<Q", len(tag) + sum(v.nbytes for v in views)) + tag)
  for v in views:
    out.write(v)
  out.flush()


def _receive(stream: BinaryIO) -> bytearray | None:
  header = stream.read(8)
  if len(header) < 8:
    return None
  (size,) = struct.unpack("<Q", header)
  message = bytearray(size)
  view, got = memoryview(message), 0
  while got < size:
    n = stream.readinto(view[got:])
    if not n:
      return None
    got += n
  return message


def _run(config: str, out: BinaryIO) -> None:
  """A worker's life: build the packer, then send batches until the reader goes away."""
  try:
    c = json.loads(config)
    recipes = [example_ops.TaskRecipe.from_json(r) for r in c["recipes"]]
    packer = packing.RowPacker(recipes, c["rates"], np.asarray(c["rows"]), c["num_rows"],
                               c["seed"], c["pack"], c["shuffle"], c["repeat"],
                               np.asarray(c["state"], np.int64), c["example_ids"])
    layout = _layout(len(c["rows"]), recipes[0].lengths, c["example_ids"], len(recipes))
    while True:
      features, valid = packer.next_batch()
      parts = [features[name] for name, _, _ in layout[:-2]]
      parts += [valid.astype(np.int32), packer.state]
      _send(out, _BATCH, parts)
  except (BrokenPipeError, KeyboardInterrupt):
    return
  except Exception as e:  # noqa: BLE001 - reported to the main process in one line
    try:
      _send(out, _ERROR, [np.frombuffer(f"{type(e).__name__}: {e}".encode(), np.uint8)])
    except (BrokenPipeError, OSError):
      pass


def worker_batches(recipes: Sequence[example_ops.TaskRecipe], rates: Sequence[float],
                   rows: np.ndarray, num_rows: int, seed: int, pack: bool, shuffle: bool,
                   repeat: bool, state: np.ndarray, example_ids: bool,
                   num_workers: int) -> Iterator[tuple[dict, np.ndarray, np.ndarray]]:
  """Yields (features, valid rows, positions after) for `rows`, made by `num_workers`
  processes, the same as one `RowPacker` over all the rows would make them."""
  groups = [g for g in np.array_split(np.arange(len(rows)), num_workers) if len(g)]
  workers = []
  try:
    for group in groups:
      config = json.dumps({
          "recipes": [r.to_json() for r in recipes], "rates": [float(x) for x in rates],
          "rows": rows[group].tolist(), "num_rows": int(num_rows), "seed": int(seed),
          "pack": pack, "shuffle": shuffle, "repeat": repeat,
          "state": state[group].tolist(), "example_ids": example_ids})
      proc = subprocess.Popen([sys.executable, "-m", "t5jax.data.workers"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
      proc.stdin.write(config.encode())
      proc.stdin.close()
      workers.append((proc, _layout(len(group), recipes[0].lengths, example_ids,
                                    len(recipes))))
    while True:
      parts = []
      for proc, layout in workers:
        message = _receive(proc.stdout)
        if message is None:
          raise RuntimeError(
              f"data worker pid {proc.pid} exited with code {proc.wait()}; rerun with "
              "InputSpec.num_workers=0 to see the error in this process")
        if message[:1] == _ERROR:
          raise RuntimeError(f"data worker failed: {bytes(message[1:]).decode()}")
        parts.append(_decode(memoryview(message)[1:], layout))
      features = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]
                  if not k.startswith("_")}
      yield (features, np.concatenate([p["_valid"] for p in parts]).astype(bool),
             np.concatenate([p["_state"] for p in parts]))
  finally:
    for proc, _ in workers:
      proc.kill()
      proc.stdout.close()
      proc.wait()


def _decode(buffer: bytes, layout) -> dict:
  out, offset = {}, 0
  for name, shape, dtype in layout:
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    out[name] = np.frombuffer(buffer, dtype, count=int(np.prod(shape)),
                              offset=offset).reshape(shape)
    offset += size
  return out


if __name__ == "__main__":
  _run(sys.stdin.read(), sys.stdout.buffer)
