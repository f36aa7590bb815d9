"""Command line: `t5jax train | compile | infer | score | eval | convert | tasks | cache | plot`.

Thin wrappers over the Python API. Bad input is a one-line `error: ...` and exit
status 2; T5JAX_TRACEBACK=1 shows the traceback instead. Paths are relative to
the working directory. The flags are in cli_args.py.

    t5jax train --gin_file=runs/demo.gin --gin.TrainConfig.num_steps=100 --run_dir=runs/x
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback

from t5jax import fs
from t5jax.cli import args as cli_args, files, lib_logs


def _hide_accelerators_from_tensorflow() -> None:
  """TensorFlow (under SeqIO) must never take the accelerator memory JAX needs."""
  lib_logs.quiet_environment()
  import tensorflow as tf
  tf.config.set_visible_devices([], "GPU")


def _import_user_modules(modules: list[str]) -> None:
  """Imports user modules that register tasks, e.g. --module my_tasks.

  Raises:
    ValueError: the module is missing or fails to import (naming it, and where
      in the user's file it failed).
  """
  if os.getcwd() not in sys.path:
    sys.path.insert(0, os.getcwd())
  for name in modules:
    try:
      importlib.import_module(name)
    except ModuleNotFoundError as e:
      if e.name != name and not name.startswith(f"{e.name}."):
        raise ValueError(f"--module {name}: it imports {e.name!r}, which is not installed "
                         f"({e}).") from None
      raise ValueError(
          f"--module {name}: no module {name!r}; put {name}.py in the working directory "
          "or on PYTHONPATH (write the module name, not a file path).") from None
    except Exception as e:  # noqa: BLE001 - the user's code: say where it failed, in one line
      if os.environ.get("T5JAX_TRACEBACK"):
        raise
      frame = traceback.extract_tb(e.__traceback__)[-1]
      where = (f"{e.filename} line {e.lineno}" if isinstance(e, SyntaxError)
               else f"{frame.filename} line {frame.lineno}")
      raise ValueError(f"--module {name} failed at {where}: {type(e).__name__}: "
                       f"{files.describe_error(e)}") from None


def _split_gin_flags(argv: list[str]) -> tuple[list[str], list[str]]:
  """Separates --gin.NAME=VALUE flags (any configurable) from the other flags."""
  bindings, rest = [], []
  for arg in argv:
    if arg.startswith("--gin."):
      binding = arg[len("--gin."):]
      if "=" not in binding:
        cli_args.parser().error(f"{arg} has no value; write --gin.NAME=VALUE.")
      bindings.append(binding)
    else:
      rest.append(arg)
  return bindings, rest


def _decode_config(args):
  """DecodeConfig from gin bindings, overridden by the flags that were given."""
  from t5jax.decode import evaluate
  flags = {k: getattr(args, k) for k in ("method", "temperature", "top_k", "top_p",
                                         "num_beams", "alpha", "seed",
                                         "no_repeat_ngram_size", "repetition_penalty")
           if getattr(args, k) is not None}
  return evaluate.DecodeConfig(**flags)


def _check_outputs_per_input(args, strategy) -> None:
  """--num_return_sequences is beam search's, --num_samples sampling's."""
  if args.num_return_sequences and strategy.method != "beam":
    raise ValueError(f"--num_return_sequences={args.num_return_sequences} returns beams; add "
                     "--method=beam (or --num_samples K with --method=sample).")
  if args.num_return_sequences and args.num_return_sequences > strategy.num_beams:
    raise ValueError(f"--num_return_sequences={args.num_return_sequences} is more than "
                     f"--num_beams={strategy.num_beams}; raise --num_beams or ask for fewer.")
  if args.num_samples and (strategy.method != "sample" or strategy.temperature == 0.0):
    raise ValueError(f"--num_samples={args.num_samples} draws samples; add --method=sample "
                     "with a temperature above 0 (or --num_return_sequences K with "
                     "--method=beam).")


def _check_paths(args) -> None:
  """Fails on bad paths and numbers before any model is loaded or any file written."""
  for flag in ("batch_size", "max_input_length", "max_decode_length", "max_target_length",
               "targets_length", "max_examples", "devices", "max_shard_bytes", "num_beams",
               "num_return_sequences", "num_samples"):
    value = getattr(args, flag, None)
    if value is not None and value < 1:
      raise ValueError(f"--{flag}={value} must be a positive number.")
  if args.command in ("infer", "score"):
    files.check_input_file("--input", args.input)
    files.check_output_file("--output", args.output, not_same_as=args.input)
  if args.command in ("infer", "score", "eval"):
    files.check_input_dir("--checkpoint", args.checkpoint)
  if args.command == "eval" and args.output_dir:
    files.check_output_dir("--output_dir", args.output_dir)
  if args.command == "train":
    files.check_output_dir("--run_dir", args.run_dir)
    if args.init_from:
      files.check_input_dir("--init_from", args.init_from)
  if args.command == "convert":
    source = next(f for f in ("from_hf", "to_hf", "from_peft") if getattr(args, f))
    if source != "to_hf" and fs.is_gcs(getattr(args, source)):
      raise ValueError(f"--{source} {getattr(args, source)}: Hugging Face "
                       "directories are read from local disk; copy it down first (gcloud "
                       "storage cp -r).")
    files.check_input_dir(f"--{source}", getattr(args, source))
    if args.from_peft and not args.base:
      raise ValueError("--from_peft needs --base CKPT_DIR: the t5jax checkpoint of the "
                       "adapter's base model (t5jax convert --from_hf HF_DIR --out CKPT_DIR).")
    if args.base:
      files.check_input_dir("--base", args.base)
    if args.merge and not args.to_hf:
      raise ValueError("--merge applies to --to_hf of a LoRA run; drop it.")
    if args.to_hf and fs.is_gcs(args.out):
      raise ValueError(f"--out {args.out}: a Hugging Face directory is written on local disk; "
                       "give a local --out (then gcloud storage cp -r it where you like).")
    files.check_output_dir("--out", args.out)
  if args.command == "plot":
    files.check_input_dir("RUN_DIR", args.run_dir)
    if args.output:
      files.check_output_file("--output", args.output)
  if args.command == "cache":
    if args.workers < 0:
      raise ValueError(f"--workers={args.workers} must be >= 0 (0 builds in this process).")
    if args.data_dir:
      from t5jax import store
      os.environ["T5JAX_DATA_DIR"] = store.normalize(args.data_dir)  # Checked first.


def _inference_mesh(args, bindings: list[str]):
  """The mesh `infer`, `score` and `eval` run on: none (one device) unless a gin file or a
  MeshConfig binding asks for one, or several processes share the work."""
  import jax
  from t5jax.parallel import partitioning
  from t5jax.train import loop
  if args.gin_file or any(b.startswith("MeshConfig.") for b in bindings) or \
      jax.process_count() > 1:
    return partitioning.make_mesh(loop.MeshConfig())
  return None


def _check_eval_split(name: str, split: str) -> None:
  """Raises ValueError (naming the registered ones) for an unknown task, mixture or split."""
  import seqio
  from t5jax.data import registry
  for task in seqio.get_subtasks(registry.get_task_or_mixture(name)):
    if split not in task.splits:
      raise ValueError(f"--split {split!r}: task {task.name} has the splits "
                       f"{', '.join(sorted(task.splits))}.")


def _run(args, bindings: list[str]) -> None:
  """Runs one parsed subcommand (user modules already imported)."""
  if args.command == "train":
    from t5jax import config
    from t5jax.parallel import distributed
    from t5jax.train import loop
    distributed.initialize(args.coordinator_address, args.num_processes, args.process_id,
                           args.distributed, args.heartbeat_timeout_seconds)
    if args.init_from:
      # Absolute, so that config.gin still names it when read from elsewhere.
      init_from = fs.absolute(args.init_from)
      bindings.append(f"CheckpointConfig.init_from = {init_from!r}")
    config.parse_gin(args.gin_file or ["runs/demo.gin"], bindings)
    loop.train(args.run_dir, loop.TrainConfig())
  elif args.command == "convert":
    from t5jax.interop import convert
    if args.from_hf:
      path = convert.hf_to_checkpoint(args.from_hf, args.out)
      print(f"Wrote t5jax checkpoint {path}")
    elif args.from_peft:
      path = convert.peft_to_checkpoint(args.from_peft, args.base, args.out)
      print(f"Wrote t5jax checkpoint {path} (the adapter; the base stays in {args.base})")
    else:
      what = convert.checkpoint_to_hf(args.to_hf, args.out, args.max_shard_bytes,
                                      task=args.task, merge=args.merge)
      print(f"Wrote {what} {args.out}")
  elif args.command in ("infer", "score", "eval"):
    from t5jax import config
    from t5jax.cli import infer
    from t5jax.parallel import distributed
    from t5jax.train import loop  # noqa: F401 (gin configurables: MeshConfig, EvalConfig)
    if args.command == "eval":
      _check_eval_split(args.task or args.mixture, args.split)
    distributed.initialize(args.coordinator_address, args.num_processes, args.process_id,
                           args.distributed, args.heartbeat_timeout_seconds)
    config.parse_gin(args.gin_file, bindings)
    strategy = _decode_config(args) if args.command != "score" else None
    if args.command == "infer":
      _check_outputs_per_input(args, strategy)
    getattr(infer, args.command)(args, strategy, _inference_mesh(args, bindings))
  elif args.command == "compile":
    import json
    from t5jax.train import aot, loop
    from t5jax import config
    config.parse_gin(args.gin_file or ["runs/demo.gin"], bindings)
    if args.fit:
      from t5jax.train import fit_search
      train_config = loop.TrainConfig()
      print(f"Searching settings for {train_config.model} on {args.topology} x {args.slices}, "
            "fastest estimate first:", flush=True)
      winner, tried = fit_search.search(train_config, args.topology, args.slices,
                                        max_compiles=args.fit_compiles,
                                        log=lambda line: print(line, flush=True))
      print(fit_search.format_table(winner, tried, train_config, fit_search.HEADROOM))
      if args.fit_recipe and winner:
        fs.write_text(args.fit_recipe, fit_search.recipe(
            winner, train_config, args.topology, args.slices,
            args.gin_file or ["runs/demo.gin"], bindings))
        print(f"Wrote {args.fit_recipe}: the run with this setting, for t5jax train "
              f"--gin_file={args.fit_recipe} (it includes the gin files given here)")
      print(json.dumps(fit_search.summary(winner, tried, train_config)))
      return
    if args.decode:
      if args.fit:
        raise ValueError("--fit searches training settings; drop it with --decode.")
      report = aot.compile_decode(loop.TrainConfig(), accelerator_type=args.topology,
                                  slices=args.slices)
      print(aot.format_decode_report(report))
      print(json.dumps(report))
      return
    if args.topology:
      report = aot.compile_for_slice(loop.TrainConfig(), args.topology, args.slices)
    else:
      report = aot.compile_train_step(loop.TrainConfig())
    print(aot.format_report(report))
    print(json.dumps(report))
  elif args.command == "plot":
    from t5jax.cli import plot
    print(f"Wrote {plot.plot_run(args.run_dir, args.output)}")
  elif args.command == "cache":
    from t5jax.cli import cache
    cache.run(args)
  elif args.command == "tasks":
    from t5jax.data import listing
    print(listing.format_registry())


def main(argv: list[str] | None = None) -> int:
  """Runs `t5jax ARGV...`; returns the exit status (2 for bad input)."""
  if argv is None:  # a real command line (not a test calling main): keep library logs quiet
    lib_logs.quiet_stderr()
  argv = sys.argv[1:] if argv is None else argv
  bindings, rest = _split_gin_flags(argv)
  args = cli_args.parser().parse_args(rest)
  try:
    _check_paths(args)
    if args.command == "compile" and args.fit_recipe:
      if not args.fit:
        raise ValueError("--fit_recipe writes the setting --fit chooses: add --fit.")
      files.check_output_file("--fit_recipe", args.fit_recipe)
    if args.command == "compile" and args.topology:
      from t5jax.parallel import topology
      topology.slice_of(args.topology)  # An unknown type fails before anything loads.
      if args.slices < 1:
        raise ValueError(f"--slices={args.slices} must be a positive number.")
      if args.fit_compiles < 1:
        raise ValueError(f"--fit_compiles={args.fit_compiles} must be a positive number.")
    elif args.command == "compile" and args.fit:
      raise ValueError("--fit searches settings with libtpu's compiler: give the slice with "
                       "--topology TYPE (e.g. --topology v5p-8).")
    elif args.command == "compile":
      # Before any backend starts: N fake CPU devices stand in for the target's.
      os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                 f" --xla_force_host_platform_device_count={args.devices}")
      os.environ["JAX_PLATFORMS"] = "cpu"
    _hide_accelerators_from_tensorflow()
    if not lib_logs.shown():
      from absl import logging as absl_logging
      # Orbax's and SeqIO's chatter, and Orbax's tracebacks of a failed save, which reaches
      # the user as t5jax's own one-line error (T5JAX_LIB_LOGS=1 shows them all).
      absl_logging.set_verbosity(absl_logging.FATAL)
    import t5jax.data.tasks  # noqa: F401  (registers the shipped tasks and mixtures)
    _import_user_modules(args.module)
    _run(args, bindings)
  except (ValueError, OSError, FloatingPointError, ImportError) as e:
    # (fs.StorageError, a failed save or an unreachable bucket included: an OSError.)
    if os.environ.get("T5JAX_TRACEBACK"):
      raise
    # One line: gin appends its call context to errors of configurables it builds.
    print(f"error: {files.describe_error(e)}", file=sys.stderr)
    _exit_if_distributed(2)
    return 2
  return 0


def _exit_if_distributed(code: int) -> None:
  """A process of a multi-process run that stops on an error exits at once: the threads of a
  failed Orbax save may wait at a barrier for minutes, and jax.distributed's shutdown waits
  for every process (the others stop on the same error)."""
  jax = sys.modules.get("jax")
  if jax is not None and jax.distributed.is_initialized():
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # noqa: SLF001


if __name__ == "__main__":
  sys.exit(main())
