"""Fills batch rows with examples, each row from its own deterministic stream, in numpy.

Row r (of B global rows) has a position: how many mixture draws it has made and how many
examples of each task it has taken, `state[r] = [draws, count_0, ..., count_{T-1}]`. From the
position alone follow, with no replay:
  * the task of its next example: draw `draws` of the mixture, `uniform(seed, r, draws)`
    against the rates' cumulative sums (i.i.d. with the mixture's rates);
  * which example: the task's stream is strided over the rows, position
    `k = r + B * count_t` of it (so the B rows together read each position exactly once), and
    position k is stored example `permute(k mod n_t)` of epoch `k // n_t`, a fresh keyed
    permutation each epoch (`example_ops.example_ids`);
  * its noise (span corruption): keyed by (seed, task, k).
A row is packed greedily: examples go in while both the inputs and the targets fit; the first
that does not fit starts the next row. So a batch is a pure function of the rows' positions,
and the position after it is all a checkpoint needs to resume exactly, at any step, in
constant time, with any number of processes (rows are global).

Rows are filled in rounds, every unfinished row taking its next example in each round, so the
index arithmetic is vectorised over rows.
"""

from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np

from t5jax.data import example_ops
from t5jax.data import index_random

# Keeps the mixture draws apart from the other keyed choices.
_MIX_SALT = 1 << 20

ENCODER_FEATURES = ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions",
                    "encoder_task_ids")
DECODER_FEATURES = ("decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
                    "decoder_segment_ids", "decoder_positions", "decoder_task_ids")
EXAMPLE_IDS = "decoder_example_ids"


def task_key(name: str) -> int:
  """A task's key in the keyed choices: its name's CRC, so a task's stream does not depend
  on the other tasks of the mixture."""
  return zlib.crc32(name.encode())


class RowPacker:
  """Produces batches of some rows of the global batch, from and to their positions.

  Args:
    recipes: the tasks, in task-id order.
    rates: the mixture's rates, one per task.
    rows: the global indices of the rows this packer fills.
    num_rows: B, the global batch size.
    seed: the data seed.
    pack: several examples per row (else one, padded).
    shuffle: a fresh order of each task's examples every epoch (else file order).
    repeat: loop over the data forever; else each row ends after one pass.
    state: int64 [len(rows), 1 + T] positions to start from (zeros: the beginning).
    example_ids: also output `decoder_example_ids` (stored example index per target token,
      -1 on padding), to audit what was read.
  """

  def __init__(self, recipes: Sequence[example_ops.TaskRecipe], rates: Sequence[float],
               rows: np.ndarray, num_rows: int, seed: int, pack: bool, shuffle: bool,
               repeat: bool, state: np.ndarray | None = None, example_ids: bool = False):
    self._views = [example_ops.TaskView(r) for r in recipes]
    self._sizes = np.array([v.num_examples for v in self._views], np.int64)
    for view, size in zip(self._views, self._sizes):
      if size == 0:
        raise ValueError(f"task {view.recipe.name!r} has no examples in this split")
    rates = np.asarray(rates, np.float64)
    self._cum = np.cumsum(rates / rates.sum())[:-1]
    self._keys = [task_key(r.name) for r in recipes]
    self._rows = np.asarray(rows, np.int64)
    self._num_rows = int(num_rows)
    self._seed, self._pack, self._shuffle, self._repeat = seed, pack, shuffle, repeat
    self._example_ids = example_ids
    self._lengths = recipes[0].lengths
    shape = (len(self._rows), 1 + len(recipes))
    self.state = np.zeros(shape, np.int64) if state is None else np.array(state, np.int64)
    if self.state.shape != shape:
      raise ValueError(f"data position has shape {self.state.shape}, expected {shape}")
    self._pending: dict[int, tuple] = {}

  def _candidates(self, local: np.ndarray) -> None:
    """Computes the next example of each row in `local` into the pending table."""
    rows, draws = self._rows[local], self.state[local, 0]
    if len(self._views) == 1:
      tasks = np.zeros(len(local), np.int64)
    else:
      u = index_random.uniform(self._seed, _MIX_SALT, rows, draws)
      tasks = np.searchsorted(self._cum, u, side="right")
    counts = self.state[local, 1 + tasks]
    ks = rows + self._num_rows * counts
    for t in np.unique(tasks):
      sel = np.nonzero(tasks == t)[0]
      view, key = self._views[t], self._keys[t]
      ids = example_ops.example_ids(ks[sel], int(self._sizes[t]), self._shuffle,
                                    self._seed, key)
      keys = index_random.hash64(self._seed, key, ks[sel]).astype(np.int64)
      live = self._repeat | (ks[sel] < self._sizes[t])
      made = iter(view.examples(ids[live], keys[live]))
      for j, i in enumerate(sel):
        if live[j]:
          inputs, targets = next(made)
          self._pending[int(local[i])] = (int(t), int(ids[j]), inputs, targets)
        else:  # This row has read all of task t (a single pass).
          self._pending[int(local[i])] = (int(t), None, None, None)

  def _exhausted(self, i: int) -> bool:
    return bool(np.all(self._rows[i] + self._num_rows * self.state[i, 1:] >= self._sizes))

  def next_batch(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The next batch of these rows (int32 features) and which rows hold any example."""
    n = len(self._rows)
    li, lt = self._lengths["inputs"], self._lengths["targets"]
    out = _empty_rows(n, self._lengths, self._example_ids)
    used_in = np.zeros(n, np.int64)
    used_tg = np.zeros(n, np.int64)
    segments = np.zeros(n, np.int64)
    active = np.ones(n, bool)
    while active.any():
      local = np.nonzero(active)[0]
      need = np.array([i for i in local if i not in self._pending], np.int64)
      if len(need):
        self._candidates(need)
      for i in local:
        t, ex_id, inputs, targets = self._pending[i]
        if inputs is None:  # This row has read all of task t (a single pass).
          del self._pending[i]
          if len(self._views) == 1 or self._exhausted(i):
            active[i] = False
          else:
            self.state[i, 0] += 1  # Draw again: another task still has examples.
          continue
        a, b = used_in[i], used_tg[i]
        if a + len(inputs) > li or b + len(targets) > lt:
          active[i] = False  # Full; the example opens this row's next batch.
          continue
        del self._pending[i]
        _place(out, i, a, b, inputs, targets, segments[i] + 1, t, self._pack,
               ex_id if self._example_ids else None)
        used_in[i], used_tg[i], segments[i] = a + len(inputs), b + len(targets), segments[i] + 1
        self.state[i, 0] += 1
        self.state[i, 1 + t] += 1
        if not self._pack:
          active[i] = False
    return out, segments > 0


def _empty_rows(n: int, lengths: dict, example_ids: bool = False) -> dict[str, np.ndarray]:
  out = {k: np.zeros((n, lengths["inputs"]), np.int32) for k in ENCODER_FEATURES}
  out.update({k: np.zeros((n, lengths["targets"]), np.int32) for k in DECODER_FEATURES})
  if example_ids:
    out[EXAMPLE_IDS] = np.full((n, lengths["targets"]), -1, np.int32)
  return out


def _place(out: dict, i: int, a: int, b: int, inputs: np.ndarray, targets: np.ndarray,
           segment: int, task: int, pack: bool, example_id: int | None) -> None:
  """Writes one example into row i at encoder offset a and decoder offset b."""
  m, p = len(inputs), len(targets)
  out["encoder_input_tokens"][i, a:a + m] = inputs
  out["encoder_segment_ids"][i, a:a + m] = segment
  out["encoder_positions"][i, a:a + m] = np.arange(m)
  out["encoder_task_ids"][i, a:a + m] = task
  out["decoder_target_tokens"][i, b:b + p] = targets
  out["decoder_input_tokens"][i, b + 1:b + p] = targets[:-1]
  if not pack and p < out["decoder_target_tokens"].shape[1]:
    # SeqIO shifts an unpacked row whole, so the last target (EOS) is also the input after
    # it (a position without loss).
    out["decoder_input_tokens"][i, p] = targets[-1]
  out["decoder_loss_weights"][i, b:b + p] = targets != 0
  out["decoder_segment_ids"][i, b:b + p] = segment
  out["decoder_positions"][i, b:b + p] = np.arange(p)
  out["decoder_task_ids"][i, b:b + p] = task
  if example_id is not None:
    out[EXAMPLE_IDS][i, b:b + p] = example_id


def pack_examples(pairs: Sequence[tuple[np.ndarray, np.ndarray]], lengths: dict,
                  task_ids: Sequence[int] | None = None) -> dict[str, np.ndarray]:
  """Packs (inputs, targets) pairs, in order, into as many rows as they need, the way each
  row of the pipeline is packed (greedy: the first example that does not fit opens the next
  row). Examples must already be trimmed to the lengths."""
  rows, used = [], None
  for j, (inputs, targets) in enumerate(pairs):
    if (used is None or used[0] + len(inputs) > lengths["inputs"]
        or used[1] + len(targets) > lengths["targets"]):
      rows.append([])
      used = [0, 0]
    rows[-1].append(j)
    used = [used[0] + len(inputs), used[1] + len(targets)]
  out = _empty_rows(len(rows), lengths)
  for i, row in enumerate(rows):
    a = b = 0
    for seg, j in enumerate(row, start=1):
      inputs, targets = pairs[j]
      _place(out, i, a, b, inputs, targets, seg, 0 if task_ids is None else task_ids[j],
             True, None)
      a, b = a + len(inputs), b + len(targets)
  return out
