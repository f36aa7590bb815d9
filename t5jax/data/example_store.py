"""Random access to a task's tokenized examples, stored as flat token arrays on disk.

Each feature is one flat int32 array plus int64 offsets (`FEATURE.tokens.npy`,
`FEATURE.offsets.npy`), memory-mapped when read, so that example `i` is a slice and worker
processes share the pages instead of each holding the data. `t5jax.data.task_cache` writes
stores from SeqIO tasks; this module only reads them (numpy only, for worker processes).
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np


@dataclasses.dataclass(frozen=True)
class ExampleStore:
  """A split's pre-cache examples: `features[name] = (tokens_flat int32, offsets int64 [N+1])`."""
  directory: str
  num_examples: int
  features: dict

  def tokens(self, feature: str, index: int) -> np.ndarray:
    flat, offsets = self.features[feature]
    return flat[offsets[index]:offsets[index + 1]]

  @classmethod
  def open(cls, directory: str) -> "ExampleStore":
    """Maps a written store into memory (read-only, shared between processes)."""
    with open(os.path.join(directory, "info.json"), encoding="utf-8") as f:
      info = json.load(f)
    features = {
        name: (np.load(os.path.join(directory, f"{name}.tokens.npy"), mmap_mode="r"),
               np.load(os.path.join(directory, f"{name}.offsets.npy")))
        for name in info["features"]}
    return cls(directory, info["num_examples"], features)
