"""The registry table printed by `t5jax tasks`."""

from t5jax.data import listing


def test_format_registry(t5jax_data_dir):
  del t5jax_data_dir
  table = listing.format_registry()
  lines = table.splitlines()
  assert lines[0].split() == ["TASK", "SPLITS", "(EXAMPLES)", "METRICS"]
  row = next(l for l in lines if l.startswith("glue_sst2 "))
  assert row.split() == ["glue_sst2", "train", "67,349", "validation", "872", "accuracy"]
  row = next(l for l in lines if l.startswith("multi30k_en_fr "))
  assert row.split() == ["multi30k_en_fr", "train", "29,000", "validation", "1,014", "test",
                         "1,000", "bleu"]
  start = lines.index("multi30k_mix")
  assert lines[start + 1].split() == ["multi30k_en_de", "0.5000"]
  assert lines[start + 2].split() == ["multi30k_en_fr", "0.5000"]
  for name in ("glue_mix", "supervised_mix", "multitask_mix"):
    assert name in lines
