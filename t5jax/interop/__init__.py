"""Conversion between t5jax and Hugging Face T5 checkpoints (see docs/interop.md).

Stands on model/, data/ and checkpoint; never imports train/, decode/ or cli/.
"""

from t5jax.interop.hf_config import hf_config_from_t5config, t5config_from_hf
from t5jax.interop.hf_io import load_hf_dir, read_hf_state_dict, save_hf_dir
from t5jax.interop.hf_weights import hf_state_dict_from_params, params_from_hf_state_dict

__all__ = [
    "hf_config_from_t5config", "t5config_from_hf", "load_hf_dir", "read_hf_state_dict",
    "save_hf_dir", "hf_state_dict_from_params", "params_from_hf_state_dict",
]
