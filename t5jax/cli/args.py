"""The `t5jax` command line's flags: every subcommand, every option with its help and default.

Paths are relative to the working directory (or absolute, or start with ~).
Any subcommand also takes --gin.CONFIGURABLE.PARAMETER=VALUE bindings; cli.py
takes those out before argparse sees the rest.
"""

from __future__ import annotations

import argparse

DESCRIPTION = """\
T5-style text-to-text multi-task learning in JAX/Flax.

Paths are relative to the working directory. Errors are one line;
T5JAX_TRACEBACK=1 shows the traceback. Library logs (TensorFlow, XLA, CUDA
probing) are hidden; T5JAX_LIB_LOGS=1 shows them."""


class _HelpWithDefaults(argparse.RawDescriptionHelpFormatter):
  """Appends "(default: X)" to an option's help unless the help already says it or
  there is no default worth showing (None, False, an empty list)."""

  def _get_help_string(self, action):
    text = action.help or ""
    if ("default" in text or action.default in (None, False, [], argparse.SUPPRESS)
        or action.required or not action.option_strings):
      return text
    return f"{text} (default: %(default)s)"


def _sub(sub, name: str, help_text: str) -> argparse.ArgumentParser:
  parser = sub.add_parser(name, help=help_text, description=help_text,
                          formatter_class=_HelpWithDefaults)
  parser.add_argument("--module", action="append", default=[], metavar="MODULE",
                      help="Python module to import first, e.g. one that registers your tasks "
                      "(my_tasks for ./my_tasks.py); repeatable")
  return parser


def parser() -> argparse.ArgumentParser:
  """The whole command line, one subparser per subcommand."""
  top = argparse.ArgumentParser(prog="t5jax", description=DESCRIPTION,
                                formatter_class=_HelpWithDefaults)
  sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
  _train(sub)
  _compile(sub)
  _infer(sub)
  _score(sub)
  _eval(sub)
  _convert(sub)
  _tasks(sub)
  _cache(sub)
  _plot(sub)
  for subparser in sub.choices.values():
    _accept_both_spellings(subparser)
  return top


def _accept_both_spellings(parser: argparse.ArgumentParser) -> None:
  """Every --long_option also answers to --long-option and the other way round (help
  shows the documented spelling only): `convert --to_hf`, typed by analogy with
  `--run_dir`, works."""
  for spelling, action in list(parser._option_string_actions.items()):  # noqa: SLF001
    if not spelling.startswith("--"):
      continue
    other = "--" + (spelling[2:].replace("_", "-") if "_" in spelling
                    else spelling[2:].replace("-", "_"))
    parser._option_string_actions.setdefault(other, action)  # noqa: SLF001


def _gin_files(parser, default: str = "runs/demo.gin") -> None:
  parser.add_argument(
      "--gin_file", action="append", default=[], metavar="FILE",
      help="gin file, looked up in t5jax's gin_configs/ first (e.g. runs/demo.gin, "
      "models/t5_1_1_small.gin), then in the working directory (./FILE always means the "
      "working directory's); repeatable, later files override earlier ones "
      f"(default: {default})")


def _train(sub) -> None:
  train = _sub(sub, "train", "train or fine-tune a model; run the same command again to resume")
  _gin_files(train)
  train.add_argument("--run_dir", default="runs/demo",
                     help="where metrics, TensorBoard events, config.gin and checkpoints go")
  train.add_argument("--init_from", default=None, metavar="DIR",
                     help="fine-tune: start from the parameters of this run or converted "
                     "checkpoint, with a fresh optimizer and step (default: a random start)")
  _distributed_flags(train)


def _distributed_flags(parser) -> None:
  parser.add_argument("--coordinator_address", default=None, metavar="HOST:PORT",
                      help="multi-process: the address of process 0 (default: one process)")
  parser.add_argument("--num_processes", type=int, default=None,
                      help="multi-process: how many processes run this command "
                      "(default: one process)")
  parser.add_argument("--process_id", type=int, default=None,
                      help="multi-process: this process's index, 0 to num_processes-1 "
                      "(default: one process)")
  parser.add_argument("--heartbeat_timeout_seconds", type=int, default=100,
                      help="multi-process: a process silent this long is declared dead and "
                      "the others exit with an error")
  parser.add_argument("--distributed", default=None, choices=("auto", "none"),
                      help="auto: let JAX detect Cloud TPU / SLURM / Kubernetes; none: one "
                      "process (default: $T5JAX_DISTRIBUTED, else none)")


def _compile(sub) -> None:
  aot = _sub(sub, "compile", "compile the train step for a TPU slice with libtpu's compiler "
             "(--topology) or for N fake CPU devices (--devices), with no accelerator and no "
             "real arrays, and print per-device memory and FLOPs")
  _gin_files(aot)
  target = aot.add_mutually_exclusive_group(required=True)
  target.add_argument("--topology", default=None, metavar="TYPE",
                      help="a Cloud TPU accelerator type, e.g. v5p-128, v5litepod-16, v4-32, "
                      "v6e-256: libtpu's compiler, the chip's HBM, fit and roofline")
  target.add_argument("--devices", type=int, default=None,
                      help="number of fake CPU devices of the target mesh (XLA:CPU's estimate)")
  aot.add_argument("--slices", type=int, default=1,
                   help="with --topology: this many slices over the data-centre network "
                   "(multislice; set MeshConfig.slices to match)")
  aot.add_argument("--decode", action="store_true",
                   help="compile a decoding batch instead of the train step: what `t5jax eval` "
                   "and `infer` need per device (EvalConfig's batch_size, lengths and "
                   "strategy; bfloat16 parameters with "
                   "--gin.ModelSettings.param_dtype=\"'bfloat16'\")")
  aot.add_argument("--fit", action="store_true",
                   help="with --topology: search remat, scanned layers, the attention's query "
                   "block, microbatches and the FSDP/tensor split for the fastest estimated "
                   "setting that fits with 10%% of HBM free; prints it as gin bindings, and the "
                   "table of what was compiled (reports cached in ~/.cache/t5jax, or "
                   "$T5JAX_COMPILE_CACHE)")
  aot.add_argument("--fit_compiles", type=int, default=6,
                   help="with --fit: compile at most this many settings")
  aot.add_argument("--fit_recipe", default=None, metavar="FILE",
                   help="with --fit: also write the run with the chosen setting as a gin file "
                   "(it includes this command's gin files and repeats its bindings; libtpu's "
                   "figures in a comment), for `t5jax train --gin_file=FILE`")


def _model_flags(parser, what: str) -> None:
  parser.add_argument("--checkpoint", required=True, metavar="DIR",
                      help=f"{what}: a run directory (its latest checkpoint), its "
                      "checkpoints/ directory, one step directory, or a converted checkpoint "
                      "(required)")
  parser.add_argument("--batch_size", type=int, default=32, help="examples per batch")
  parser.add_argument("--max_input_length", type=int, default=512,
                      help="inputs longer than this many tokens are truncated (with a warning)")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                      help="activation dtype")
  parser.add_argument("--param_dtype", default="float32", choices=("float32", "bfloat16"),
                      help="the parameters' dtype once restored (bfloat16: half the memory)")
  _gin_files(parser, default="none: one device; a mesh file such as mesh/fsdp.gin, or any "
             "MeshConfig binding, spreads the model and each batch over all devices")
  _distributed_flags(parser)


def _task_flag(parser) -> None:
  parser.add_argument("--task", default=None,
                      help="whose parameters to use, for a model with task slots (soft sharing "
                      "or adapters) (default: the shared parameters)")


def _decode_flags(parser) -> None:
  """Decoding flags; each one left out takes DecodeConfig's value (gin-bindable)."""
  group = parser.add_argument_group("decoding (unset: DecodeConfig's gin value)")
  group.add_argument("--method", default=None, choices=("greedy", "sample", "beam"),
                     help="decoding strategy (default: greedy)")
  group.add_argument("--temperature", type=float, default=None,
                     help="sample: softmax temperature (default: 1.0)")
  group.add_argument("--top_k", type=int, default=None,
                     help="sample: keep the k most likely tokens; 0 keeps all (default: 0)")
  group.add_argument("--top_p", type=float, default=None,
                     help="sample: nucleus probability mass; 1.0 keeps all (default: 1.0)")
  group.add_argument("--num_beams", type=int, default=None,
                     help="beam: beam width (default: 4)")
  group.add_argument("--alpha", type=float, default=None,
                     help="beam: T5's length penalty exponent (default: 0.6)")
  group.add_argument("--seed", type=int, default=None,
                     help="sample: random seed (default: 0)")
  group.add_argument("--no_repeat_ngram_size", type=int, default=None,
                     help="never repeat an n-gram of this size in the output; 0 is off "
                     "(default: 0)")
  group.add_argument("--repetition_penalty", type=float, default=None,
                     help="> 1 discourages tokens already output; 1.0 is off (default: 1.0)")


def _infer(sub) -> None:
  infer = _sub(sub, "infer", "generate an output for each input line, one JSON line each")
  _model_flags(infer, "the model")
  infer.add_argument("--input", required=True, metavar="FILE",
                     help="plain text (one input a line) or JSONL with an 'inputs' field "
                     "(and optionally 'targets_prefix', text the output starts with and "
                     "continues); - reads stdin (required)")
  infer.add_argument("--output", default="-", metavar="FILE",
                     help="JSONL to write, its folder created if needed; - is stdout")
  infer.add_argument("--prefix", default="",
                     help='prepended to each input, e.g. "summarize: " (default: none)')
  infer.add_argument("--max_decode_length", type=int, default=64,
                     help="most tokens to generate per input")
  infer.add_argument("--overwrite", action="store_true",
                     help="start --output over; without it, an --output that holds the first "
                     "N outputs (a run that was killed) is continued after them")
  several = infer.add_mutually_exclusive_group()
  several.add_argument("--num_return_sequences", type=int, default=None, metavar="K",
                       help="beam: write the K best beams per input (K <= --num_beams), as "
                       "'predictions' and 'scores' lists, best first")
  several.add_argument("--num_samples", type=int, default=None, metavar="K",
                       help="sample: draw K outputs per input, written as 'predictions' and "
                       "'scores' lists, best first")
  _task_flag(infer)
  _decode_flags(infer)


def _score(sub) -> None:
  score = _sub(sub, "score", "log-likelihood of each target given its input")
  _model_flags(score, "the model")
  score.add_argument("--input", required=True, metavar="FILE",
                     help="JSONL with 'inputs' and 'targets' fields; - reads stdin (required)")
  score.add_argument("--output", default="-", metavar="FILE",
                     help="JSONL to write (each input line plus 'log_likelihood'), its folder "
                     "created if needed; - is stdout")
  score.add_argument("--max_target_length", type=int, default=512,
                     help="targets longer than this many tokens are truncated (with a warning)")
  score.add_argument("--token_scores", action="store_true",
                     help="also write each target token ('target_tokens', its pieces) and its "
                     "log-probability ('token_scores')")
  _task_flag(score)


def _eval(sub) -> None:
  evaluate = _sub(sub, "eval", "decode a task's or mixture's split and compute its metrics")
  _model_flags(evaluate, "the model")
  which = evaluate.add_mutually_exclusive_group(required=True)
  which.add_argument("--task", help="a registered task to evaluate (`t5jax tasks` lists them); "
                     "this or --mixture is required")
  which.add_argument("--mixture", help="a registered mixture: evaluates each of its tasks")
  evaluate.add_argument("--split", default="validation", help="the dataset split to decode")
  evaluate.add_argument("--max_examples", type=int, default=None,
                        help="decode at most this many examples per task (default: all)")
  evaluate.add_argument("--targets_length", type=int, default=128,
                        help="most tokens to generate per example")
  evaluate.add_argument("--output_dir", default=None, metavar="DIR",
                        help="where the results go: metrics.jsonl, TensorBoard events and "
                        "TASK-STEP.jsonl, what the model said for each example "
                        "(default: CHECKPOINT/eval)")
  evaluate.add_argument("--all_checkpoints", action="store_true",
                        help="evaluate every checkpoint of the run not yet in --output_dir's "
                        "metrics.jsonl, oldest first (default: the latest only)")
  evaluate.add_argument("--watch", action="store_true",
                        help="--all_checkpoints, then wait for the run's new checkpoints and "
                        "evaluate each, until its last step (continuous evaluation)")
  evaluate.add_argument("--watch_interval", type=float, default=60.0, metavar="SECONDS",
                        help="--watch: how often to look for a new checkpoint")
  evaluate.add_argument("--watch_timeout", type=float, default=3600.0, metavar="SECONDS",
                        help="--watch: give up after this long without a new checkpoint")
  evaluate.add_argument("--loss_only", action="store_true",
                        help="only each task's teacher-forced loss and token accuracy: no "
                        "decoding, no metrics")
  _decode_flags(evaluate)


def _convert(sub) -> None:
  convert = _sub(sub, "convert", "Hugging Face T5 directory <-> t5jax checkpoint")
  direction = convert.add_mutually_exclusive_group(required=True)
  direction.add_argument("--from_hf", metavar="HF_DIR",
                         help="read a Hugging Face directory: config.json and (sharded) "
                         "safetensors, or a tensors-only pytorch_model.bin")
  direction.add_argument("--to_hf", metavar="CKPT_DIR",
                         help="read a t5jax run or checkpoint directory (a LoRA or "
                         "prompt-tuning run: write its Hugging Face PEFT adapter)")
  direction.add_argument("--from_peft", metavar="ADAPTER_DIR",
                         help="read a Hugging Face PEFT adapter (LoRA or prompt tuning; "
                         "adapter_config.json + adapter_model.safetensors) trained on the "
                         "model of --base")
  convert.add_argument("--out", required=True, metavar="DIR",
                       help="directory to write, created if needed (required)")
  convert.add_argument("--task", default=None,
                       help="with --to_hf of a model with task slots: export this task's "
                       "parameters (its LoRA or prompt) as a plain T5 (required for such a "
                       "model)")
  convert.add_argument("--merge", action="store_true",
                       help="with --to_hf of a LoRA run: fold the LoRA into the base weights "
                       "and write the full model instead of the PEFT adapter")
  convert.add_argument("--base", default=None, metavar="CKPT_DIR",
                       help="with --from_peft: the t5jax checkpoint of the adapter's base "
                       "model (convert it with --from_hf first); required")
  convert.add_argument("--max_shard_bytes", type=int, default=None,
                       help="with --to_hf: split model.safetensors into shards of at most this "
                       "many bytes (default: one file)")


def _tasks(sub) -> None:
  _sub(sub, "tasks", "list the registered tasks and mixtures with their splits and sizes")


def _cache(sub) -> None:
  cache = _sub(sub, "cache", "build a task's example store (tokenized once, read at random by "
               "every host) as an Apache Beam pipeline")
  cache.add_argument("--task", required=True,
                     help="a registered task, or a mixture (each of its tasks)")
  cache.add_argument("--split", default="train", help="the split to build")
  cache.add_argument("--data_dir", default=None, metavar="DIR",
                     help="where stores live: a directory or gs://BUCKET/PATH (default: "
                     "$T5JAX_DATA_DIR, else ~/.cache/t5jax/tfds); training must see the same")
  cache.add_argument("--workers", type=int, default=2,
                     help="worker processes of Beam's DirectRunner (0: build in this process)")
  cache.add_argument("--runner", default=None,
                     help="another Beam runner, e.g. DataflowRunner, FlinkRunner, SparkRunner")
  cache.add_argument("--beam_option", action="append", default=[], metavar="--OPTION=VALUE",
                     help="a pipeline option for the runner, e.g. --beam_option=--project=P; "
                     "repeatable")
  cache.add_argument("--rebuild", action="store_true",
                     help="delete the store (complete or not) and build it anew")
  cache.add_argument("--verify", action="store_true",
                     help="afterwards re-read every shard and check it against its sha256")
  cache.add_argument("--progress_seconds", type=float, default=10.0,
                     help="seconds between progress lines")


def _plot(sub) -> None:
  plot = _sub(sub, "plot", "draw a run's per-task loss curves into a PNG")
  plot.add_argument("run_dir", help="a run directory (holding metrics.jsonl)")
  plot.add_argument("--output", default=None, metavar="FILE",
                    help="PNG to write (default: RUN_DIR/loss_by_task.png)")
