"""Counter-based randomness for the input pipeline: every random choice is a pure function
of (seed, keys, index), so any position of the stream can be computed without replaying it.

* `hash64(*keys)`: splitmix64 over the keys, vectorised over numpy arrays.
* `uniform(*keys)`: a float64 in [0, 1) from the same hash.
* `permute(index, n, *keys)`: a keyed permutation of range(n) evaluated at `index`, O(1) per
  index and no memory (a 4-round Feistel network on the next power-of-4 domain, with cycle
  walking back into [0, n)), the index shuffle that Grain and MaxText use for global shuffles
  of datasets too large to hold a permutation table for.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_FEISTEL_ROUNDS = 4


def _mix(z: np.ndarray) -> np.ndarray:
  # splitmix64's finaliser; uint64 arithmetic wraps, as the algorithm wants.
  z = (z ^ (z >> np.uint64(30))) * _M1
  z = (z ^ (z >> np.uint64(27))) * _M2
  return z ^ (z >> np.uint64(31))


_MASK64 = (1 << 64) - 1


def _mix_int(z: int) -> int:
  # `_mix` on a Python int: numpy scalar arithmetic costs microseconds per operation.
  z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
  z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
  return z ^ (z >> 31)


def hash64(*keys) -> np.ndarray:
  """A 64-bit hash of the keys (ints or broadcastable int arrays), as uint64."""
  h, i = 0, 0
  while i < len(keys) and not isinstance(keys[i], np.ndarray):
    h = _mix_int((h + 0x9E3779B97F4A7C15 + int(keys[i])) & _MASK64)
    i += 1
  h = np.uint64(h)
  with np.errstate(over="ignore"):  # uint64 arithmetic wraps, as the algorithm wants.
    for key in keys[i:]:
      h = _mix(h + _GOLDEN + np.asarray(key, np.int64).astype(np.uint64))
  return h


def uniform(*keys) -> np.ndarray:
  """Floats in [0, 1) keyed by `keys` (53 random bits each)."""
  return (hash64(*keys) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def permute(index, n: int, *keys) -> np.ndarray:
  """Position `index` (int or int array, in [0, n)) of a random permutation of range(n)
  chosen by `keys`. The same keys give the same permutation; every n is exact."""
  index = np.asarray(index, np.int64)
  if n <= 1:
    return np.zeros_like(index)
  half_bits = max(1, (int(n - 1).bit_length() + 1) // 2)
  mask = np.uint64((1 << half_bits) - 1)
  out = index.astype(np.uint64)
  todo = np.ones(out.shape, bool)
  with np.errstate(over="ignore"):
    while np.any(todo):
      # Cycle walking: re-encrypt the values that fell outside [0, n) until they land inside;
      # the domain is < 4n, so a few rounds at most.
      y = out[todo] if out.ndim else out
      left, right = y >> np.uint64(half_bits), y & mask
      for r in range(_FEISTEL_ROUNDS):
        f = hash64(*keys, r, right.astype(np.int64)) & mask
        left, right = right, left ^ f
      y = (left << np.uint64(half_bits)) | right
      if out.ndim:
        out[todo] = y
        todo = out >= np.uint64(n)
      else:
        out = y
        todo = np.asarray(out >= np.uint64(n))
  return out.astype(np.int64)
