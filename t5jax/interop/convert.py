"""`t5jax convert`: Hugging Face directories <-> t5jax (Orbax) checkpoints.

A converted checkpoint is a parameters-only checkpoint (see t5jax/checkpoint.py)
with the model's T5Config and its vocabulary in its metadata: the source's SentencePiece
model copied beside it as OUT/spiece.model (mT5's, UMT5's, T5's), or ByT5's bytes (a
source whose tokenizer is ByT5Tokenizer). Inference, scoring, evaluation and fine-tuning
read it from there; `--to_hf` writes it back as the source had it.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np
import seqio

from t5jax import checkpoint, fs
from t5jax.data import vocab
from t5jax.interop import hf_io, peft_io
from t5jax.model import param_tree, peft, scan_params, t5, task_params

def hf_to_checkpoint(hf_dir: str, out_dir: str) -> str:
  """Converts a Hugging Face T5 directory into a t5jax checkpoint; returns its path."""
  cfg, params = hf_io.load_hf_dir(hf_dir)
  vocabulary = hf_vocabulary(hf_dir, cfg)
  if _holds_checkpoints(out_dir):
    raise FileExistsError(
        f"{out_dir} already holds checkpoints; convert into an empty or new directory.")
  meta = {
      "model_config": dataclasses.asdict(cfg),
      "source": {"hugging_face": os.path.abspath(hf_dir)},
      "vocab": vocab.record(vocabulary, None),
  }
  path = checkpoint.save_params(out_dir, params, meta)
  vocab.record(vocabulary, out_dir)  # spiece.model beside checkpoints/
  return path


def hf_vocabulary(hf_dir: str, cfg) -> seqio.Vocabulary:
  """The vocabulary of a Hugging Face model directory: bytes if its tokenizer is
  ByT5Tokenizer, else its spiece.model (with the tokenizer config's extra ids).

  Raises:
    ValueError: it has neither, and its embedding table is not T5's (so T5's vocabulary
      would decode it into the wrong text).
  """
  tokenizer_class, tokenizer = hf_io.read_tokenizer_class(hf_dir)
  if tokenizer_class == "ByT5Tokenizer":
    return vocab.byte_vocabulary(int(tokenizer.get("extra_ids", vocab.BYTE_EXTRA_IDS)))
  spiece = os.path.join(hf_dir, vocab.SPIECE_NAME)
  if os.path.isfile(spiece):
    return vocab.sentencepiece(spiece, int(tokenizer.get("extra_ids", vocab.EXTRA_IDS)))
  if cfg.vocab_size == vocab.EMBEDDING_VOCAB_SIZE:
    return vocab.get_vocabulary()  # T5's own checkpoints, saved without their tokenizer
  raise ValueError(
      f"{hf_dir} has no spiece.model and no ByT5Tokenizer config, and its model has "
      f"{cfg.vocab_size:,} embedding rows, not T5's {vocab.EMBEDDING_VOCAB_SIZE:,}: copy the "
      "model's SentencePiece file there as spiece.model, then convert.")


def _holds_checkpoints(out_dir: str) -> bool:
  directory = checkpoint.checkpoints_dir(out_dir)
  return fs.isdir(directory) and bool(fs.listdir(directory))


def read_checkpoint_params(ckpt_dir: str):
  """(T5Config, numpy params, unrolled layers) of a t5jax checkpoint, on the host (a PEFT
  checkpoint's frozen parameters from its base checkpoint)."""
  cfg = checkpoint.model_config_from_meta(checkpoint.read_meta(ckpt_dir))
  model = t5.Transformer(cfg)
  abstract = param_tree.abstract_params(model)
  params = jax.tree.map(np.asarray, jax.device_get(checkpoint.load_params(ckpt_dir, abstract)))
  if cfg.scan_layers:
    params = jax.tree.map(np.asarray, scan_params.unstack_layers(params, cfg))
    cfg = cfg.replace(scan_layers=False)
  return cfg, params


def _slot(cfg, task: str | None, ckpt_dir: str) -> int | None:
  """The task slot whose per-task LoRA or prompt to export (None without per-task ones)."""
  if not cfg.peft_per_task:
    return None
  if task is None:
    raise ValueError(f"{ckpt_dir} holds a LoRA or prompt per task (task_slots "
                     f"{list(cfg.task_slots)}); choose whose to export with --task NAME.")
  return cfg.task_slots.index(task) if task in cfg.task_slots else cfg.slot_of_task(task)


def checkpoint_to_hf(ckpt_dir: str, out_dir: str, max_shard_bytes: int | None = None,
                     task: str | None = None, merge: bool = False) -> str:
  """Writes a Hugging Face directory (config.json, safetensors, spiece.model), or for a
  LoRA or prompt-tuned run a PEFT adapter directory (adapter_config.json,
  adapter_model.safetensors) for the base model; with `merge` the LoRA is folded into
  the base weights and the full model written instead. Returns what was written.

  A soft-shared model (task slots) is exported as a plain T5 for one task: its
  slot's copies take the place of the shared modules (`task`: a task or slot name);
  so is a model with a LoRA or prompt per task.
  """
  cfg, params = read_checkpoint_params(ckpt_dir)
  spiece, tokenizer = _tokenizer(checkpoint_vocabulary(ckpt_dir))
  if merge and not cfg.peft:
    raise ValueError(f"{ckpt_dir} has no LoRA to merge (--merge folds LoRA weights into the "
                     "base); drop --merge.")
  if cfg.peft:
    slot = _slot(cfg, task, ckpt_dir)
    if not merge:
      base = checkpoint.read_meta(ckpt_dir).get("peft", {}).get("base")
      peft_io.save_adapter_dir(cfg, params, out_dir, slot, base_model=base)
      hf_io.write_tokenizer(out_dir, spiece, tokenizer)
      return "PEFT adapter directory"
    cfg, params = peft_io.merged(cfg, params, slot)
    task = None if slot is not None else task
  if cfg.has_task_parameters:
    if task is None:
      raise ValueError(
          f"{ckpt_dir} holds per-task parameters (task_slots {list(cfg.task_slots)}); choose "
          "whose to export with --task NAME.")
    cfg, params = task_params.for_task(params, cfg, task)
  hf_io.save_hf_dir(cfg, params, out_dir, max_shard_bytes=max_shard_bytes,
                    spiece_model_path=spiece, tokenizer_config=tokenizer)
  return "Hugging Face directory"


def _tokenizer(vocabulary: seqio.Vocabulary) -> tuple[str | None, dict]:
  """(the local SentencePiece file or None for bytes, tokenizer_config.json) of a
  vocabulary, as Hugging Face's T5Tokenizer and ByT5Tokenizer read them."""
  config = {"tokenizer_class": "T5Tokenizer", "extra_ids": int(vocabulary.extra_ids)}
  if isinstance(vocabulary, seqio.ByteVocabulary):
    return None, {**config, "tokenizer_class": "ByT5Tokenizer"}
  return fs.local_copy(vocabulary.sentencepiece_model_file), config


def checkpoint_vocabulary(ckpt_dir: str) -> seqio.Vocabulary:
  """The vocabulary a t5jax checkpoint (run or converted directory) was trained with."""
  meta = checkpoint.read_meta(ckpt_dir)
  return vocab.load(fs.parent(checkpoint.checkpoints_dir(ckpt_dir)), meta.get("vocab"))


def peft_to_checkpoint(adapter_dir: str, base_dir: str, out_dir: str) -> str:
  """Reads a Hugging Face PEFT adapter (LoRA or prompt tuning) trained on the model of
  t5jax checkpoint `base_dir` and writes a t5jax PEFT checkpoint to `out_dir`: the
  adapter's parameters plus a reference to the base, which infer, eval, train
  (--init_from) and convert read like any checkpoint. Returns its path."""
  base_meta = checkpoint.read_meta(base_dir)
  base_cfg = checkpoint.model_config_from_meta(base_meta)
  if base_cfg.peft or base_cfg.has_task_parameters:
    raise ValueError(f"{base_dir} is not a plain T5 checkpoint; load PEFT adapters onto the "
                     "plain base model they were trained on.")
  where = f"PEFT adapter {adapter_dir}"
  cfg = peft_io.config_with_adapter(base_cfg, peft_io.read_adapter_config(adapter_dir), where)
  state = hf_io.read_safetensors_file(os.path.join(adapter_dir, peft_io.WEIGHTS_NAME))
  params = peft_io.params_from_adapter(cfg.replace(scan_layers=False), state, where)
  if cfg.scan_layers:
    params = jax.tree.map(np.asarray, scan_params.stack_layers(params, cfg))
  if _holds_checkpoints(out_dir):
    raise FileExistsError(
        f"{out_dir} already holds checkpoints; convert into an empty or new directory.")
  meta = {**{k: v for k, v in base_meta.items() if k == "model"},
          "vocab": vocab.record(checkpoint_vocabulary(base_dir), None),
          "model_config": dataclasses.asdict(cfg),
          "source": {"peft_adapter": os.path.abspath(adapter_dir)},
          "peft": checkpoint.peft_meta(base_dir, peft.trainable_pattern(cfg))}
  path = checkpoint.save_params(out_dir, params, meta)
  vocab.record(checkpoint_vocabulary(base_dir), out_dir)
  return path
