"""Reads and writes Hugging Face T5 model directories (config.json + weights).

Weights are read from safetensors (one file or sharded with an index) or, for old
checkpoints, from pytorch_model.bin through `torch.load(weights_only=True)`, which
refuses anything but tensors; nothing is ever unpickled otherwise. Weights are
written as float32 safetensors, sharded like `save_pretrained` when asked.
"""

from __future__ import annotations

import json
import os
import pathlib
import pickle
import re
import shutil
from collections.abc import Callable, Mapping

import numpy as np
from safetensors.numpy import save_file

from t5jax.interop.hf_config import hf_config_from_t5config, t5config_from_hf
from t5jax.interop.hf_weights import hf_state_dict_from_params, params_from_hf_state_dict
from t5jax.model.config import T5Config

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
TORCH_NAME = "pytorch_model.bin"
TORCH_INDEX_NAME = "pytorch_model.bin.index.json"
SPIECE_NAME = "spiece.model"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
_SHARD_RE = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")


def _read_safetensors(file: pathlib.Path) -> dict[str, np.ndarray]:
  import jax
  from safetensors import safe_open

  # The numpy reader rejects bfloat16; the flax one handles it. Keep the arrays on the
  # host: they are converted to float32 numpy right after.
  try:
    with jax.default_device(jax.devices("cpu")[0]), safe_open(file, framework="flax") as f:
      return {key: np.asarray(f.get_tensor(key)) for key in f.keys()}
  except Exception as e:  # noqa: BLE001 - safetensors' own error type (SafetensorError)
    if isinstance(e, OSError):
      raise
    raise ValueError(f"{file} is not a readable safetensors file ({_first_line(e)}); "
                     "it may be truncated or from another format.") from None


def _read_torch(file: pathlib.Path) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError:
    raise ImportError(f"reading {file} needs PyTorch (pip install torch), or convert the "
                      "checkpoint to safetensors first.") from None
  # weights_only=True: torch's restricted loader, which refuses arbitrary pickled objects.
  try:
    state = torch.load(file, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError:
    raise ValueError(
        f"{file} holds objects other than tensors; t5jax will not unpickle it (unpickling "
        "runs arbitrary code). Use a safetensors copy of the model (model.safetensors) "
        "instead.") from None
  except RuntimeError as e:
    raise ValueError(f"{file} is not a readable PyTorch checkpoint ({_first_line(e)}).") from None
  if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
    raise ValueError(f"{file} is not a state dict of tensors (it holds a "
                     f"{type(state).__name__}); save the model's state_dict() or safetensors.")
  return {key: t.detach().to(torch.float32).numpy() for key, t in state.items()}


def _read_sharded(index_file: pathlib.Path,
                  read: Callable[[pathlib.Path], dict]) -> dict[str, np.ndarray]:
  index = _read_json(index_file)
  if not isinstance(index, dict) or not isinstance(index.get("weight_map"), dict):
    raise ValueError(f"{index_file} has no 'weight_map' object mapping tensor names to shards.")
  weight_map = index["weight_map"]
  state = {}
  for shard in sorted(set(weight_map.values())):
    file = index_file.parent / shard
    if not file.is_file():
      raise FileNotFoundError(f"{file} not found; {index_file.name} lists it as a shard.")
    state.update(read(file))
  absent = sorted(set(weight_map) - set(state))
  if absent:
    raise ValueError(f"{index_file} maps {absent[0]!r} to {weight_map[absent[0]]!r}, which does "
                     "not contain it; the index and shards are from different saves.")
  return state


def _first_line(error: Exception) -> str:
  text = str(error).strip()
  return text.splitlines()[0] if text else type(error).__name__


def _read_json(file: pathlib.Path) -> dict:
  try:
    return json.loads(file.read_text(encoding="utf-8"))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{file} is not valid JSON ({_first_line(e)}).") from None


def read_safetensors_file(file: str | os.PathLike) -> dict[str, np.ndarray]:
  """Every tensor of one safetensors file (e.g. a PEFT adapter's), as numpy arrays."""
  file = pathlib.Path(file)
  if not file.is_file():
    raise FileNotFoundError(f"{file} not found; PEFT writes adapter weights as "
                            f"{file.name} (a .bin adapter is not read: t5jax never unpickles).")
  return _read_safetensors(file)


def read_hf_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads every tensor of a model directory, preferring safetensors like transformers."""
  path = pathlib.Path(path)
  if (path / SAFETENSORS_NAME).is_file():
    return _read_safetensors(path / SAFETENSORS_NAME)
  if (path / SAFETENSORS_INDEX_NAME).is_file():
    return _read_sharded(path / SAFETENSORS_INDEX_NAME, _read_safetensors)
  if (path / TORCH_NAME).is_file():
    return _read_torch(path / TORCH_NAME)
  if (path / TORCH_INDEX_NAME).is_file():
    return _read_sharded(path / TORCH_INDEX_NAME, _read_torch)
  raise FileNotFoundError(f"{path} has no weights: expected {SAFETENSORS_NAME}, "
                          f"{SAFETENSORS_INDEX_NAME} or {TORCH_NAME}.")


def read_tokenizer_class(path: str | os.PathLike) -> tuple[str | None, dict]:
  """(the tokenizer class a model directory names, its tokenizer_config.json or {})."""
  path = pathlib.Path(path)
  tokenizer = {}
  if (path / TOKENIZER_CONFIG_NAME).is_file():
    tokenizer = _read_json(path / TOKENIZER_CONFIG_NAME)
  config = _read_json(path / CONFIG_NAME) if (path / CONFIG_NAME).is_file() else {}
  return config.get("tokenizer_class") or tokenizer.get("tokenizer_class"), tokenizer


def load_hf_dir(path: str | os.PathLike) -> tuple[T5Config, dict]:
  """Loads a Hugging Face T5 / mT5 model directory.

  Args:
    path: a directory written by `save_pretrained` (or `save_hf_dir`).
  Returns:
    (T5Config with default dtypes, params: nested dict of float32 numpy arrays).
  Raises:
    FileNotFoundError: config.json or the weights are missing (named in the message).
    ValueError: an unsupported config, or weights that do not match it.
  """
  path = pathlib.Path(path)
  config_file = path / CONFIG_NAME
  if not config_file.is_file():
    raise FileNotFoundError(f"{config_file} not found; a Hugging Face model directory needs "
                            f"{CONFIG_NAME} next to its weights.")
  raw = _read_json(config_file)
  if not isinstance(raw, dict):
    raise ValueError(f"{config_file} holds a JSON {type(raw).__name__}, not the object of a "
                     "Hugging Face T5 config.")
  try:
    cfg = t5config_from_hf(raw)
  except (KeyError, TypeError) as e:
    raise ValueError(f"{config_file} is not a usable T5 config ({type(e).__name__}: "
                     f"{_first_line(e)}).") from None
  return cfg, params_from_hf_state_dict(read_hf_state_dict(path), cfg)


def _shards(state: Mapping[str, np.ndarray], max_bytes: int) -> list[dict[str, np.ndarray]]:
  """Splits in order, like save_pretrained; a tensor larger than max_bytes gets its own shard."""
  shards, size = [{}], 0
  for key, x in state.items():
    if shards[-1] and size + x.nbytes > max_bytes:
      shards.append({})
      size = 0
    shards[-1][key] = x
    size += x.nbytes
  return shards


def save_hf_dir(cfg: T5Config, params: Mapping, path: str | os.PathLike,
                max_shard_bytes: int | None = None,
                spiece_model_path: str | os.PathLike | None = None,
                tokenizer_config: dict | None = None) -> None:
  """Writes a directory that `T5ForConditionalGeneration.from_pretrained` (or UMT5's) loads.

  Args:
    cfg: the model's config.
    params: our parameter tree (boxed or not).
    path: output directory, created if needed; weight files from an earlier save there
      are replaced.
    max_shard_bytes: if the weights are larger, write shards and an index.
    spiece_model_path: a SentencePiece model to copy in as spiece.model, byte for byte.
    tokenizer_config: written as tokenizer_config.json (its tokenizer_class, e.g.
      "ByT5Tokenizer", named in config.json too, as the hub's ByT5 configs do).
  """
  if max_shard_bytes is not None and max_shard_bytes <= 0:
    raise ValueError(f"max_shard_bytes must be positive or None, got {max_shard_bytes}.")
  if spiece_model_path is not None and not os.path.isfile(spiece_model_path):
    raise FileNotFoundError(f"{spiece_model_path} not found; pass the SentencePiece model "
                            "(spiece.model) of this model's vocabulary, or None.")
  state = hf_state_dict_from_params(params, cfg)  # validates before anything is written
  path = pathlib.Path(path)
  path.mkdir(parents=True, exist_ok=True)
  # Stale weights would shadow or mix with the new ones (a loader prefers model.safetensors).
  for old in path.iterdir():
    if old.name in (SAFETENSORS_NAME, SAFETENSORS_INDEX_NAME) or _SHARD_RE.fullmatch(old.name):
      old.unlink()
  tokenizer_class = (tokenizer_config or {}).get("tokenizer_class")
  (path / CONFIG_NAME).write_text(json.dumps(hf_config_from_t5config(
      cfg, tokenizer_class if tokenizer_class == "ByT5Tokenizer" else None), indent=2) + "\n")

  # transformers checks this metadata when it loads safetensors.
  metadata = {"format": "pt"}
  shards = [state] if max_shard_bytes is None else _shards(state, max_shard_bytes)
  if len(shards) == 1:
    save_file(state, path / SAFETENSORS_NAME, metadata=metadata)
  else:
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
      name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
      save_file(shard, path / name, metadata=metadata)
      weight_map.update(dict.fromkeys(shard, name))
    index = {"metadata": {"total_size": sum(x.nbytes for x in state.values())},
             "weight_map": weight_map}
    (path / SAFETENSORS_INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
  write_tokenizer(path, spiece_model_path, tokenizer_config)


def write_tokenizer(path: str | os.PathLike, spiece_model_path: str | os.PathLike | None,
                    tokenizer_config: dict | None) -> None:
  """The tokenizer's files in a model (or adapter) directory: spiece.model, byte for byte,
  and tokenizer_config.json."""
  path = pathlib.Path(path)
  if spiece_model_path is not None:
    shutil.copyfile(spiece_model_path, path / SPIECE_NAME)
  if tokenizer_config is not None:
    (path / TOKENIZER_CONFIG_NAME).write_text(json.dumps(tokenizer_config, indent=2) + "\n")
