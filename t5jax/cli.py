"""Command line: `t5jax train | eval | infer | score | convert | tasks | plot` (thin wrappers).

Errors print as one line; set T5JAX_TRACEBACK=1 to see the full traceback.

    t5jax train --gin_file=runs/demo.gin --gin.TrainConfig.num_steps=100 --run_dir=runs/x
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys


def _hide_accelerators_from_tensorflow() -> None:
  """TensorFlow (under SeqIO) must never take the accelerator memory JAX needs."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import tensorflow as tf
  tf.config.set_visible_devices([], "GPU")


def _import_user_modules(modules: list[str]) -> None:
  """Imports user modules that register tasks, e.g. --module my_tasks."""
  sys.path.insert(0, os.getcwd())
  for name in modules:
    try:
      importlib.import_module(name)
    except ModuleNotFoundError as e:
      raise SystemExit(
          f"error: --module {name}: {e}; put {name}.py in the current directory or on "
          "PYTHONPATH.") from None


def _split_gin_flags(argv: list[str]) -> tuple[list[str], list[str]]:
  """Separates --gin.NAME=VALUE flags (any configurable) from the other flags."""
  bindings, rest = [], []
  for arg in argv:
    if arg.startswith("--gin."):
      binding = arg[len("--gin."):]
      if "=" not in binding:
        raise SystemExit(f"error: {arg} has no value; write --gin.NAME=VALUE.")
      bindings.append(binding)
    else:
      rest.append(arg)
  return bindings, rest


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="t5jax", description=__doc__.splitlines()[0])
  sub = parser.add_subparsers(dest="command", required=True)

  train = sub.add_parser("train", help="train or fine-tune a model")
  train.add_argument("--gin_file", action="append", default=[],
                     help="gin file(s), looked up in . and gin_configs/ (default runs/demo.gin)")
  train.add_argument("--run_dir", default="runs/demo", help="where logs and checkpoints go")
  train.add_argument("--module", action="append", default=[],
                     help="Python module(s) to import first, e.g. to register your tasks")
  train.add_argument("--init_from", default=None,
                     help="fine-tune: start from this run's (or converted) parameters")
  train.add_argument("--coordinator_address", default=None,
                     help="multi-process: HOST:PORT of process 0")
  train.add_argument("--num_processes", type=int, default=None)
  train.add_argument("--process_id", type=int, default=None)
  train.add_argument("--heartbeat_timeout_seconds", type=int, default=100,
                     help="multi-process: a process silent this long is declared dead and "
                     "the others exit with an error")
  train.add_argument("--distributed", default=None, choices=("auto", "none"),
                     help="auto: let JAX detect Cloud TPU / SLURM / Kubernetes "
                     "(also T5JAX_DISTRIBUTED=auto)")

  tasks = sub.add_parser("tasks", help="list registered tasks and mixtures")
  tasks.add_argument("--module", action="append", default=[])

  convert = sub.add_parser("convert", help="Hugging Face directory <-> t5jax checkpoint")
  direction = convert.add_mutually_exclusive_group(required=True)
  direction.add_argument("--from-hf", dest="from_hf", metavar="HF_DIR",
                         help="config.json + (sharded) safetensors or pytorch_model.bin")
  direction.add_argument("--to-hf", dest="to_hf", metavar="CKPT_DIR",
                         help="a t5jax run or checkpoint directory")
  convert.add_argument("--out", required=True, help="directory to write")
  convert.add_argument("--task", default=None,
                       help="--to-hf of a soft-shared model: export this task's copies")
  convert.add_argument("--max_shard_bytes", type=int, default=None,
                       help="with --to-hf: shard model.safetensors above this size")
  convert.set_defaults(module=[])

  aot = sub.add_parser("compile", help="compile the train step for N devices and print "
                       "per-device memory and FLOPs (fake CPU devices, no real arrays)")
  aot.add_argument("--gin_file", action="append", default=[])
  aot.add_argument("--devices", type=int, required=True, help="devices of the target mesh")
  aot.add_argument("--module", action="append", default=[])

  plot = sub.add_parser("plot", help="draw a run's per-task loss curves into a PNG")
  plot.add_argument("run_dir")
  plot.add_argument("--output", default=None, help="PNG path (default RUN_DIR/loss_by_task.png)")
  plot.set_defaults(module=[])

  infer = sub.add_parser("infer", help="generate outputs for inputs, one JSON line each")
  infer.add_argument("--checkpoint", required=True, help="run or converted checkpoint dir")
  infer.add_argument("--input", required=True, help="text or JSONL ('inputs' field); - is stdin")
  infer.add_argument("--output", default="-", help="JSONL to write; - is stdout")
  infer.add_argument("--prefix", default="", help='prepended to each input, e.g. "summarize: "')
  infer.add_argument("--max_decode_length", type=int, default=64)
  infer.add_argument("--task", default=None,
                     help="whose parameters to use, for a model with task slots")
  _add_decode_flags(infer)
  _add_common_model_flags(infer)

  score = sub.add_parser("score", help="log-likelihood of targets given inputs")
  score.add_argument("--checkpoint", required=True)
  score.add_argument("--input", required=True, help="JSONL with 'inputs' and 'targets'")
  score.add_argument("--output", default="-")
  score.add_argument("--max_target_length", type=int, default=512)
  score.add_argument("--task", default=None,
                     help="whose parameters to use, for a model with task slots")
  _add_common_model_flags(score)

  evaluate = sub.add_parser("eval", help="decode a task's split and compute its metrics")
  evaluate.add_argument("--checkpoint", required=True)
  which = evaluate.add_mutually_exclusive_group(required=True)
  which.add_argument("--task")
  which.add_argument("--mixture")
  evaluate.add_argument("--split", default="validation")
  evaluate.add_argument("--max_examples", type=int, default=None)
  evaluate.add_argument("--targets_length", type=int, default=128)
  evaluate.add_argument("--output_dir", default=None,
                        help="where eval.jsonl and TensorBoard events go (default CHECKPOINT/eval)")
  evaluate.add_argument("--module", action="append", default=[])
  _add_decode_flags(evaluate)
  _add_common_model_flags(evaluate)
  return parser


def _add_common_model_flags(parser):
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--max_input_length", type=int, default=512)
  parser.add_argument("--dtype", default="float32", help="activation dtype: float32 or bfloat16")
  parser.set_defaults(module=getattr(parser, "module", []))


def _add_decode_flags(parser):
  parser.add_argument("--method", default=None, choices=("greedy", "sample", "beam"))
  parser.add_argument("--temperature", type=float, default=None)
  parser.add_argument("--top_k", type=int, default=None)
  parser.add_argument("--top_p", type=float, default=None)
  parser.add_argument("--num_beams", type=int, default=None)
  parser.add_argument("--alpha", type=float, default=None, help="T5 length penalty (beam)")
  parser.add_argument("--seed", type=int, default=None)
  parser.add_argument("--no_repeat_ngram_size", type=int, default=None,
                      help="never repeat an n-gram of this size in the output (0: off)")
  parser.add_argument("--repetition_penalty", type=float, default=None,
                      help="> 1 discourages tokens already output (1.0: off)")


def _decode_config(args):
  """DecodeConfig from gin bindings, overridden by the flags that were given."""
  from t5jax import evaluate
  flags = {k: getattr(args, k) for k in ("method", "temperature", "top_k", "top_p",
                                         "num_beams", "alpha", "seed",
                                         "no_repeat_ngram_size", "repetition_penalty")
           if getattr(args, k) is not None}
  return evaluate.DecodeConfig(**flags)


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  bindings, rest = _split_gin_flags(argv)
  args = _parser().parse_args(rest)
  if args.command == "compile":
    # Before any backend starts: N fake CPU devices stand in for the target's.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={args.devices}")
    os.environ["JAX_PLATFORMS"] = "cpu"
  _hide_accelerators_from_tensorflow()
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax and SeqIO chatter; errors still show
  import t5jax.data.tasks  # noqa: F401  (registers the shipped tasks and mixtures)
  _import_user_modules(args.module)
  try:
    if args.command == "train":
      from t5jax import config, distributed, train
      distributed.initialize(args.coordinator_address, args.num_processes, args.process_id,
                             args.distributed, args.heartbeat_timeout_seconds)
      if args.init_from:
        bindings.append(f"CheckpointConfig.init_from = {args.init_from!r}")
      config.parse_gin(args.gin_file or ["runs/demo.gin"], bindings)
      train.train(args.run_dir, train.TrainConfig())
    elif args.command == "convert":
      from t5jax.interop import convert
      if args.from_hf:
        path = convert.hf_to_checkpoint(args.from_hf, args.out)
        print(f"Wrote t5jax checkpoint {path}")
      else:
        convert.checkpoint_to_hf(args.to_hf, args.out, args.max_shard_bytes, task=args.task)
        print(f"Wrote Hugging Face directory {args.out}")
    elif args.command in ("infer", "score", "eval"):
      from t5jax import config, evaluate, inference_cli  # noqa: F401 (gin configurables)
      config.parse_gin([], bindings)
      getattr(inference_cli, args.command)(args, _decode_config(args) if args.command != "score" else None)
    elif args.command == "compile":
      import json
      from t5jax import aot, config, train
      config.parse_gin(args.gin_file or ["runs/demo.gin"], bindings)
      report = aot.compile_train_step(train.TrainConfig())
      print(aot.format_report(report))
      print(json.dumps(report))
    elif args.command == "plot":
      from t5jax import plot
      print(f"Wrote {plot.plot_run(args.run_dir, args.output)}")
    elif args.command == "tasks":
      from t5jax.data import listing
      print(listing.format_registry())
  except (ValueError, FileNotFoundError, FileExistsError, FloatingPointError) as e:
    if os.environ.get("T5JAX_TRACEBACK"):
      raise
    # One line: gin appends its call context to errors of configurables it builds.
    message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    print(f"error: {message}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
