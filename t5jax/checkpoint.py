"""Orbax checkpoints: asynchronous, atomic, restorable onto any mesh and dtype.

A checkpoint directory RUN_DIR/checkpoints/STEP/ holds three items:
  params     the model parameters (all a fine-tune or inference needs);
  train      optimizer state, step and RNG (what exact resume needs besides),
             and the task state of dynamic task weighting when there is one;
  meta       JSON: step, the model's T5Config, the data position, the vocabulary
             and the run's resolved gin config.
Orbax writes each step into a temporary directory and renames it when complete (on disk),
or marks it complete with a commit_success.txt written last (in a bucket, where nothing can
be renamed atomically), so a save killed half-way is never listed, let alone restored.

Every path may be a `gs://BUCKET/PATH` URL (t5jax/fs.py): Orbax writes into the bucket
straight from every process, each its own shards.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import gin
import jax
import numpy as np

from t5jax import fs  # before Orbax: it routes epath's gs:// through gcsfs
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers
from orbax.checkpoint._src.serialization import tensorstore_utils as _ts_utils

from t5jax.model.config import T5Config
from t5jax.model import trainable

# TensorStore retries a failed GCS request 32 times, up to 32 s apart (about 15 minutes) by
# default; Orbax builds its contexts from these tables (the OCDBT one, which checkpoints use,
# is a copy it made of the base one when imported), which get the bound gcsfs has.
for _table in (_ts_utils._BASE_TS_CONTEXT, _ts_utils._DEFAULT_OCDBT_TS_CONTEXT):  # noqa: SLF001
  _table["gcs_request_retries"] = fs.tensorstore_retries()

log = logging.getLogger(__name__)

# With several processes, a save still running after this long makes each process probe the
# storage while they wait together (Checkpointer.wait).
PROBE_SECONDS = 5.0


@gin.configurable
@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
  """When to save, what to keep, and where to start from.

  Attributes:
    every_steps: save every this many steps (and always at the end); 0: only at the end.
    keep: keep the latest this many checkpoints.
    best_metric: also keep the best checkpoint by this evaluation metric
      (a key of the evaluation summary, e.g. "multi30k_en_fr/bleu").
    best_mode: "max" or "min" for best_metric.
    patience: stop training once best_metric has not improved for this many evaluations
      in a row (early stopping; 0: never). Needs best_metric and EvalConfig.every_steps.
    async_save: write in the background while training continues.
    init_from: start a fresh run (new optimizer state, step 0) from the
      parameters of this checkpoint: a run directory, its checkpoints/ directory
      or one step directory. Ignored when the run has checkpoints of its own.
    data_restart: when resuming a run whose data settings changed (mixture, rates,
      lengths, seed, batch size), keep the model and optimizer state and start the new
      data stream from its beginning, instead of refusing to resume.
    vocabulary_change: fine-tune (init_from) a checkpoint trained on another vocabulary
      than this run's tasks (vocabulary adaptation: the embedding rows keep their ids),
      instead of refusing to.
  """
  every_steps: int = 200
  keep: int = 3
  best_metric: str | None = None
  best_mode: str = "max"
  patience: int = 0
  async_save: bool = True
  init_from: str | None = None
  data_restart: bool = False
  vocabulary_change: bool = False

  def __post_init__(self):
    if self.every_steps < 0 or self.keep < 1:
      raise ValueError("CheckpointConfig.every_steps must be >= 0 and keep >= 1.")
    if self.best_mode not in ("max", "min"):
      raise ValueError(f"CheckpointConfig.best_mode={self.best_mode!r} is not 'max' or 'min'.")
    if self.patience < 0 or (self.patience and not self.best_metric):
      raise ValueError(f"CheckpointConfig.patience={self.patience} needs a best_metric to "
                       "watch (e.g. CheckpointConfig.best_metric='glue_mix/average') and "
                       "must be >= 0.")


def checkpoints_dir(path: str) -> str:
  """Accepts a run directory or its checkpoints/ directory (relative to the working
  directory, with ~, or a gs:// URL); returns the latter, absolute, as Orbax needs."""
  path = fs.absolute(path)
  sub = fs.join(path, "checkpoints")
  return sub if fs.isdir(sub) else path


def ensure_writable(directory: str) -> None:
  """Fails before training, not at the first save, if `directory` cannot be written
  (a missing bucket or an unreachable server included).

  Raises:
    fs.StorageError: one line naming the directory and the fix.
  """
  fs.check_writable(directory, "Checkpoint directory")


def _manager(directory: str, cfg: CheckpointConfig | None = None, read_only=False):
  cfg = cfg or CheckpointConfig()
  policies = [checkpoint_managers.LatestN(n=cfg.keep)]
  if cfg.best_metric:
    policies.append(checkpoint_managers.BestN(
        get_metric_fn=lambda m: m[cfg.best_metric], reverse=cfg.best_mode == "min", n=1,  # keeps the last n after sorting
        keep_checkpoints_without_metrics=False))
  options = ocp.CheckpointManagerOptions(
      enable_async_checkpointing=cfg.async_save and not read_only,
      preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
      create=not read_only, read_only=read_only)
  return ocp.CheckpointManager(directory, options=options,
                               item_names=("params", "train", "meta", "data"))


def _abstract(tree, shardings=None):
  """ShapeDtypeStructs (with target shardings) that tell Orbax how to restore."""
  if shardings is None:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


class Checkpointer:
  """Saves and restores a run's TrainState with Orbax."""

  def __init__(self, directory: str, cfg: CheckpointConfig):
    self.directory = fs.absolute(directory)
    self.cfg = cfg
    ensure_writable(self.directory)
    self._manager = _manager(self.directory, cfg)
    steps = self.steps()
    # The newest step known to be complete, and one whose asynchronous save may still run.
    self.complete: int | None = steps[-1] if steps else None
    self._pending: int | None = None

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def last_complete(self) -> str:
    """The newest complete checkpoint, in words, for a message about a failed save."""
    if self.complete is None:
      return f"there is no complete checkpoint in {self.directory}"
    return f"the last complete checkpoint is step {self.complete} ({fs.join(self.directory, str(self.complete))})"

  def _failed(self, step: int, error: BaseException) -> fs.StorageError:
    cause = fs.reason(self.directory, error)
    return fs.StorageError(
        f"Could not save step {step} in {self.directory} ({cause}); {self.last_complete()}. "
        "Run the same command again once the storage is back: it resumes from there.")

  def save(self, state, meta: dict, metrics: dict | None = None,
           data_position: jax.Array | None = None) -> None:
    """Saves at state.step (asynchronously if configured), with the input pipeline's
    position (a global [batch rows, ...] int array) when given."""
    step = int(state.step)
    train = _train_item(state)
    params = state.params
    if "peft" in meta:  # only what trains; the frozen rest is the base checkpoint's
      params = trainable.parts(params, meta["peft"]["trainable"])[0]
    items = dict(
        params=ocp.args.StandardSave(params),
        train=ocp.args.StandardSave(train),
        meta=ocp.args.JsonSave({**meta, "step": step}))
    if data_position is not None:
      items["data"] = ocp.args.StandardSave({"position": data_position})
    self.wait()
    try:
      self._manager.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)
    except Exception as e:  # noqa: BLE001 - a failed save of any kind stops the run in one line
      raise self._failed(step, e) from None
    self._pending = step
    if not self.cfg.async_save:
      self.complete, self._pending = step, None

  def read_meta(self, step: int) -> dict:
    """The JSON metadata of one of this run's checkpoints (nothing else is read)."""
    return self._manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore_latest(self, abstract_state, shardings,
                     data_position: jax.ShapeDtypeStruct | None = None
                    ) -> tuple[Any, dict, jax.Array | None] | None:
    """Restores the newest readable checkpoint onto `shardings`, or None if there is none.

    Returns (state, meta, data position); the position is restored only when
    `data_position` (its abstract value, with its sharding) is given.

    A checkpoint that fails to read (corrupt or truncated files) is skipped with
    a warning, and the one before it is tried; nothing is deleted.
    """
    for step in reversed(self.steps()):
      try:
        return self._restore(step, abstract_state, shardings, data_position)
      except Exception as e:  # noqa: BLE001 - any read failure means "try the previous one"
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        kept = self._set_aside(step)
        log.warning("Checkpoint at step %d is unreadable (%s); kept as %s.", step, msg, kept)
        print(f"warning: checkpoint at step {step} is unreadable ({msg[:200]}); kept as "
              f"{kept}; falling back to the previous one", flush=True)
    return None

  def _set_aside(self, step: int) -> str:
    """Renames an unreadable step out of Orbax's sight (so training can save that
    step again) without deleting anything."""
    source = fs.join(self.directory, str(step))
    target = f"{source}.unreadable-{int(time.time())}"
    if jax.process_index() == 0 and fs.isdir(source):
      fs.rename(source, target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"t5jax_set_aside_{step}")
    self._manager.reload()
    return target

  def _restore(self, step, abstract_state, shardings, data_position=None):
    train = _train_item(abstract_state)
    train_shardings = _train_item(shardings)
    peft = self.read_meta(step).get("peft")
    abstract_params = _abstract(abstract_state.params, shardings.params)
    if peft:
      abstract_params, abstract_frozen = trainable.parts(abstract_params, peft["trainable"])
    items = dict(
        params=ocp.args.StandardRestore(abstract_params),
        train=ocp.args.StandardRestore(_abstract(train, train_shardings)),
        meta=ocp.args.JsonRestore())
    if data_position is not None:
      items["data"] = ocp.args.StandardRestore({"position": data_position})
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    params = restored["params"]
    if peft:
      params = trainable.union(params, _load_base(peft, abstract_frozen))
    t = restored["train"]
    state = abstract_state.replace(params=params, opt_state=t["opt_state"],
                                   step=t["step"], rng=t["rng"],
                                   task_state=t.get("task_state", {}))
    if int(state.step) != step:
      raise ValueError(f"step {int(state.step)} stored under directory step {step}")
    position = restored["data"]["position"] if data_position is not None else None
    return state, restored["meta"], position

  def wait(self) -> None:
    """Blocks until the asynchronous save in flight is complete, on every process.

    With several processes, a host whose save failed would leave the others at one of
    Orbax's barriers for its coordination timeout (5 to 10 minutes), and its own save
    thread waits there too. So the processes poll together instead: while a save runs
    longer than PROBE_SECONDS, each probes the storage (a write, retried as every request
    is); one that finds it unreachable, or whose save raised, says so in the next
    all-gather, and all stop at once.

    Raises:
      fs.StorageError: the save failed here or on another process (one line naming the
        last complete checkpoint).
    """
    if self._pending is None:
      return
    if jax.process_count() == 1:
      try:
        self._manager.wait_until_finished()
      except Exception as e:  # noqa: BLE001
        raise self._failed(self._pending, e) from None
    else:
      self._wait_together()
    self.complete, self._pending = self._pending, None

  def _wait_together(self) -> None:
    from jax.experimental import multihost_utils
    started = probed = time.time()
    while True:
      busy, error = self._manager.is_saving_in_progress(), None
      if not busy:
        try:
          self._manager.wait_until_finished()  # returns at once, raising what failed
        except Exception as e:  # noqa: BLE001
          error = e
      elif time.time() - probed > PROBE_SECONDS and time.time() - started > PROBE_SECONDS:
        try:
          fs.check_writable(self.directory, "Checkpoint directory")
        except fs.StorageError as e:
          error = e
        probed = time.time()
      flags = multihost_utils.process_allgather(np.asarray([busy, error is not None], np.int32))
      flags = np.asarray(flags).reshape(-1, 2)
      if flags[:, 1].any():
        other = int(np.flatnonzero(flags[:, 1])[0])
        raise self._failed(self._pending, error if error is not None else fs.StorageError(
            f"process {other} could not finish it; its output says why")) from None
      if not flags[:, 0].any():
        return
      time.sleep(0.1)

  def close(self) -> None:
    self.wait()
    self._manager.close()


def _train_item(state) -> dict:
  """The `train` item of a TrainState (or of its abstract values or shardings).
  Fixed task weights have no task state, and their `train` item is the same as
  before task weighting existed, so older checkpoints still restore."""
  item = {"opt_state": state.opt_state, "step": state.step, "rng": state.rng}
  if jax.tree.leaves(state.task_state):
    item["task_state"] = state.task_state
  return item


def latest_step(path: str) -> int:
  """The newest complete checkpoint step under a run or checkpoints directory."""
  directory = checkpoints_dir(path)
  if not fs.isdir(directory):
    raise FileNotFoundError(f"Checkpoint directory {directory} does not exist.")
  manager = _manager(directory, read_only=True)
  step = manager.latest_step()
  manager.close()
  if step is None:
    raise FileNotFoundError(f"No complete checkpoint in {directory}.")
  return step


def all_steps(path: str) -> list[int]:
  """The complete checkpoint steps under a run or checkpoints directory, oldest first."""
  directory = checkpoints_dir(path)
  if not fs.isdir(directory):
    raise FileNotFoundError(f"Checkpoint directory {directory} does not exist.")
  manager = _manager(directory, read_only=True)
  steps = sorted(manager.all_steps())
  manager.close()
  return steps


def read_meta(path: str, step: int | None = None) -> dict:
  """The JSON metadata (model config, vocabulary, gin config) of a checkpoint."""
  directory = checkpoints_dir(path)
  step = latest_step(directory) if step is None else step
  manager = _manager(directory, read_only=True)
  meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  manager.close()
  return meta


def model_config_from_meta(meta: dict) -> T5Config:
  return T5Config(**meta["model_config"])


def load_params(path: str, abstract_params, shardings=None, step: int | None = None):
  """Parameters only (for fine-tuning, evaluation and inference), restored onto
  `shardings` and into the dtypes of `abstract_params`. A PEFT checkpoint (which holds
  only the trained parameters) gets its frozen ones from the base checkpoint it names."""
  directory = checkpoints_dir(path)
  step = latest_step(directory) if step is None else step
  if shardings is None:
    # Onto this process's first device, whatever devices saved it (Orbax would
    # otherwise insist on the saving run's topology: 8 GPUs then a laptop fails).
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shardings = jax.tree.map(lambda _: device, abstract_params)
  target = _abstract(abstract_params, shardings)
  manager = _manager(directory, read_only=True)
  peft = manager.restore(step, args=ocp.args.Composite(
      meta=ocp.args.JsonRestore()))["meta"].get("peft")
  if peft:
    target, frozen = trainable.parts(target, peft["trainable"])
  restored = manager.restore(step, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(target)))
  manager.close()
  if peft:
    return trainable.union(restored["params"], _load_base(peft, frozen))
  return restored["params"]


def peft_meta(base: str, pattern: str) -> dict:
  """The `peft` entry of a PEFT run's checkpoint metadata: which parameters it saves
  (those `pattern` matches) and the base checkpoint (pinned to its step) holding the rest."""
  directory = checkpoints_dir(base)
  return {"base": directory, "base_step": latest_step(directory), "trainable": pattern}


def _load_base(peft: dict, abstract_frozen):
  """The frozen parameters of a PEFT checkpoint, from its base checkpoint."""
  base, step = peft["base"], peft["base_step"]
  if not fs.isdir(fs.join(base, str(step))):
    raise FileNotFoundError(
        f"This PEFT checkpoint keeps only its trained parameters; the frozen ones are in base "
        f"checkpoint {base} step {step}, which is missing: restore it there (or merge the "
        "adapter while both exist: t5jax convert --to_hf RUN --merge).")
  return load_params(base, abstract_frozen, jax.tree.map(lambda x: x.sharding, abstract_frozen),
                     step=step)


def save_params(path: str, params, meta: dict, step: int = 0) -> str:
  """Writes a parameters-only checkpoint (e.g. converted from Hugging Face)."""
  directory = fs.join(path, "checkpoints")
  ensure_writable(directory)
  manager = _manager(directory, CheckpointConfig(async_save=False))
  manager.save(step, args=ocp.args.Composite(
      params=ocp.args.StandardSave(params),
      meta=ocp.args.JsonSave({**meta, "step": step})), force=True)
  manager.wait_until_finished()
  manager.close()
  return directory
