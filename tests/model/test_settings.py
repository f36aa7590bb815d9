"""ModelSettings: every T5Config field, None by default, typed, changed one at a time."""
import dataclasses

import pytest

from t5jax.model import config as model_config
from t5jax.model import settings


def test_every_t5config_field_is_a_setting_that_keeps_the_size_by_default():
  names = [f.name for f in dataclasses.fields(model_config.T5Config)]
  assert [f.name for f in dataclasses.fields(settings.ModelSettings)] == names
  empty = settings.ModelSettings()
  assert empty.changes() == {} and repr(empty) == "ModelSettings()"
  base = model_config.get_config("t5_1_1_base")
  assert model_config.get_config("t5_1_1_base", **empty.changes()) == base


def test_set_fields_are_the_changes_in_t5config_types():
  chosen = settings.ModelSettings(dtype="float32", dropout_rate=0, task_slots=["glue_.*"])
  assert chosen.changes() == {"dtype": "float32", "dropout_rate": 0, "task_slots": ("glue_.*",)}
  assert repr(chosen) == "ModelSettings(dropout_rate=0, dtype='float32', task_slots=('glue_.*',))"
  assert hash(chosen) == hash(dataclasses.replace(chosen))  # frozen and hashable, as T5Config
  cfg = model_config.get_config("t5_1_0_tiny", **chosen.changes())
  assert (cfg.dtype, cfg.dropout_rate, cfg.task_slots) == ("float32", 0.0, ("glue_.*",))


@pytest.mark.parametrize("field, value, message", [
    ("dropout_rate", "0.1", r"ModelSettings.dropout_rate='0.1' is a str, not a float \(e.g. 0.1\)"),
    ("scan_layers", 1, r"ModelSettings.scan_layers=1 is a int, not a bool"),
    ("attention_query_block", True, r"ModelSettings.attention_query_block=True is a bool, not a"),
    ("task_slots", "glue_.*", r"ModelSettings.task_slots='glue_.\*' is a str, not a tuple"),
])
def test_a_value_of_the_wrong_type_is_one_line(field, value, message):
  with pytest.raises(ValueError, match=message) as info:
    settings.ModelSettings(**{field: value})
  assert "\n" not in str(info.value)


def test_the_whole_dict_form_names_the_closest_fields_of_an_unknown_key():
  assert settings.from_dict({"remat_policy": "full"}).changes() == {"remat_policy": "full"}
  with pytest.raises(ValueError, match=r"^TrainConfig.model_overrides has no field 'dropout'. "
                     r"Did you mean lora_dropout, dropout_rate\?"):
    settings.from_dict({"dropout": 0.1})
  with pytest.raises(ValueError, match=r"has no field 'zzz'. Its fields are T5Config's: "
                     r"vocab_size, d_model, "):
    settings.from_dict({"zzz": 1}, where="ModelSettings")
