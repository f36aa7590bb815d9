"""A UL2 mixture at the checkpoint tests' short lengths (32 / 32 tokens): R, X and S
denoisers whose spans fit there, over the shipped text, beside English->French. Imported
by `t5jax train --module ul2_kill_tasks` in tests/train/test_checkpoint.py."""
import functools

import seqio

from t5jax.data import span_corruption

SHORT_DENOISERS = (("R", 3.0, 0.15), ("X", 3.0, 0.5), ("S", 0.0, 0.0))

if "text_ul2_short" not in seqio.TaskRegistry.names():
  _text = seqio.TaskRegistry.get("text_ul2")
  seqio.TaskRegistry.add(
      "text_ul2_short", source=_text.source,
      preprocessors=[functools.partial(span_corruption.ul2, denoisers=SHORT_DENOISERS,
                                       rates=(1.0, 1.0, 1.0))
                     if step is span_corruption.ul2 else step
                     for step in _text.preprocessors],
      output_features=_text.output_features, metric_fns=[])
  seqio.MixtureRegistry.add("ul2_kill_mix", [("text_ul2_short", 1.0), ("multi30k_en_fr", 1.0)])
