"""How well the demo's model translates: BLEU on Multi30k and its answer to the
README's example, for each decoding strategy, from one checkpoint loaded once.

  python benchmarks/demo_quality.py --checkpoint runs/demo --max_examples 200

Prints one line per strategy (BLEU per task, mean loss, the cat sentence's
answer) and then the whole result as one JSON line (report.emit_json).
"""

from __future__ import annotations

import argparse
import os
import time

from report import emit_json

CAT = "translate English to French: The cat sat on the mat."
# name -> DecodeConfig kwargs; the repetition guard is HF's no_repeat_ngram_size.
STRATEGIES = {
    "greedy": dict(method="greedy"),
    "greedy_no_repeat_3": dict(method="greedy", no_repeat_ngram_size=3),
    "beam4": dict(method="beam", num_beams=4, alpha=0.6),
    "beam4_no_repeat_3": dict(method="beam", num_beams=4, alpha=0.6, no_repeat_ngram_size=3),
}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--checkpoint", required=True)
  parser.add_argument("--step", type=int, default=None, help="default: the latest")
  parser.add_argument("--mixture", default="multi30k_mix")
  parser.add_argument("--split", default="test")
  parser.add_argument("--max_examples", type=int, default=200)
  parser.add_argument("--strategies", default=",".join(STRATEGIES))
  parser.add_argument("--json_out", default=None)
  args = parser.parse_args()

  import t5jax.data.tasks  # noqa: F401  (registers the shipped tasks)
  from t5jax.decode import decoding, evaluate
  from t5jax.decode.predictor import Predictor

  predictor = Predictor.from_checkpoint(os.path.abspath(args.checkpoint), dtype="float32",
                                       step=args.step)
  result = {"benchmark": "demo_quality", "checkpoint": args.checkpoint, "step": args.step, "split": args.split,
            "max_examples": args.max_examples, "strategies": {}}
  for name in args.strategies.split(","):
    strategy = decoding.DecodeConfig(**STRATEGIES[name])
    start = time.perf_counter()
    cfg = evaluate.EvalConfig(split=args.split, max_examples=args.max_examples,
                              inputs_length=64, targets_length=64, strategy=strategy)
    metrics = evaluate.evaluate(predictor, cfg, args.mixture)
    cat = predictor.generate([CAT], strategy=strategy, max_decode_length=48)[0].text
    row = {"bleu": {task: round(m["bleu"], 2) for task, m in metrics.items()},
           "loss": {task: round(m["loss"], 4) for task, m in metrics.items()},
           "cat": cat, "seconds": round(time.perf_counter() - start, 1)}
    result["strategies"][name] = row
    print(f"{name:<20} BLEU {row['bleu']}  cat: {cat!r}", flush=True)
  emit_json(result, args.json_out)


if __name__ == "__main__":
  main()
