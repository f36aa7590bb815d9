"""`t5jax convert`: Hugging Face directories <-> t5jax (Orbax) checkpoints.

A converted checkpoint is a parameters-only checkpoint (see t5jax/checkpoint.py)
with the model's T5Config in its metadata and, when the source had one, the
SentencePiece model beside it as OUT/spiece.model, which inference, scoring and
evaluation then use instead of the shipped T5 vocabulary.
"""

from __future__ import annotations

import dataclasses
import os
import shutil

import jax
import numpy as np

from t5jax import checkpoint
from t5jax.interop import hf_io
from t5jax.model import param_tree, t5, task_params

SPIECE_NAME = "spiece.model"


def hf_to_checkpoint(hf_dir: str, out_dir: str) -> str:
  """Converts a Hugging Face T5 directory into a t5jax checkpoint; returns its path."""
  cfg, params = hf_io.load_hf_dir(hf_dir)
  if os.path.isdir(checkpoint.checkpoints_dir(out_dir)) and os.listdir(
      checkpoint.checkpoints_dir(out_dir)):
    raise FileExistsError(
        f"{out_dir} already holds checkpoints; convert into an empty or new directory.")
  spiece = os.path.join(hf_dir, SPIECE_NAME)
  meta = {
      "model_config": dataclasses.asdict(cfg),
      "source": {"hugging_face": os.path.abspath(hf_dir)},
      "vocab": {"sentencepiece": SPIECE_NAME if os.path.isfile(spiece) else "t5jax:t5"},
  }
  path = checkpoint.save_params(out_dir, params, meta)
  if os.path.isfile(spiece):
    shutil.copyfile(spiece, os.path.join(out_dir, SPIECE_NAME))
  return path


def read_checkpoint_params(ckpt_dir: str):
  """(T5Config, numpy params) of a t5jax checkpoint, on the host."""
  cfg = checkpoint.model_config_from_meta(checkpoint.read_meta(ckpt_dir))
  model = t5.Transformer(cfg)
  abstract = param_tree.abstract_params(model)
  params = checkpoint.load_params(ckpt_dir, abstract)
  return cfg, jax.tree.map(np.asarray, jax.device_get(params))


def checkpoint_to_hf(ckpt_dir: str, out_dir: str, max_shard_bytes: int | None = None,
                     task: str | None = None) -> None:
  """Writes a Hugging Face directory (config.json, safetensors, spiece.model).

  A soft-shared model (task slots) is exported as a plain T5 for one task: its
  slot's copies take the place of the shared modules (`task`: a task or slot name).
  """
  cfg, params = read_checkpoint_params(ckpt_dir)
  if cfg.has_task_parameters:
    if task is None:
      raise ValueError(
          f"{ckpt_dir} holds per-task parameters (task_slots {list(cfg.task_slots)}); choose "
          "whose to export with --task NAME.")
    cfg, params = task_params.for_task(params, cfg, task)
  spiece = os.path.join(ckpt_dir, SPIECE_NAME)
  if not os.path.isfile(spiece):
    from t5jax.data import assets
    spiece = str(assets.asset_path("t5_spm/spiece.model"))
  hf_io.save_hf_dir(cfg, params, out_dir, max_shard_bytes=max_shard_bytes,
                    spiece_model_path=spiece)
