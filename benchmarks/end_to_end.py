"""End-to-end training throughput on real data: t5jax (packed rows) against the
Hugging Face loop its docs teach (dynamic padding), same examples, one process.

Both sides train the same T5 shape on the same first --examples examples of a
mixture (default supervised_mix, real lengths, trimmed to 512 / 128 tokens):
  t5jax: the training pipeline's packing (`t5jax.data.packing.pack_examples`,
    greedy, as each pipeline row is packed) into rows of 512 / 128, the jitted train step
    train.py runs (Adafactor as OptimizerConfig sets it up), as many rows per
    step as hold about --batch examples;
  HF: transformers' T5ForConditionalGeneration, the text of the same examples
    tokenized by T5Tokenizer from the shipped spiece.model, batches of --batch
    examples padded by DataCollatorForSeq2Seq to the longest in the batch,
    transformers' Adafactor (T5's settings) after clipping the gradient norm to 1.
Input pipelines are left out of the timing on both sides (batches are built
first); benchmarks/input_pipeline.py shows t5jax's keeps up with its step. It
prints examples/s, real (non-padding) target tokens/s and padding fractions for
both, the t5jax / HF ratio, and one JSON line (appended to --json_out if given).

  python benchmarks/end_to_end.py --model t5_1_1_tiny --examples 256 --batch 32
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from t5jax.train import losses, optim, step as train_step  # noqa: E402
from t5jax.parallel import partitioning
from t5jax.data import packing, registry, tf_devices, vocab  # noqa: E402
from t5jax.model import config as model_config  # noqa: E402
from t5jax.model import t5  # noqa: E402

import decode as decode_bench  # noqa: E402 (benchmarks/, beside this script)
import report  # noqa: E402
import train_step as train_step_bench  # noqa: E402


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="t5_1_1_tiny", choices=sorted(model_config.SIZES))
  p.add_argument("--layers", type=int, default=0, help="encoder and decoder depth (0: the size's)")
  p.add_argument("--mixture", default="supervised_mix")
  p.add_argument("--inputs_length", type=int, default=512)
  p.add_argument("--targets_length", type=int, default=128)
  p.add_argument("--examples", type=int, default=256, help="examples each side trains on")
  p.add_argument("--batch", type=int, default=32, help="examples per step (HF exactly, "
                 "t5jax on average: packed rows per step = this / examples per row)")
  p.add_argument("--rounds", type=int, default=1, help="passes per side, taking turns")
  p.add_argument("--torch_threads", type=int, default=0,
                 help="torch CPU threads (0: the cores this process may use, as XLA does)")
  p.add_argument("--json_out", default=None, help="append the JSON line to this file")
  return p.parse_args(argv)


def load_examples(args) -> list[dict]:
  """The mixture's first examples (shuffled with seed 0), tokens trimmed to the
  lengths, with their text (the decoded tokens) for the HF tokenizer."""
  tf_devices.hide_accelerators_from_tf()
  ds = registry.get_task_or_mixture(args.mixture).get_dataset(
      sequence_length={"inputs": args.inputs_length, "targets": args.targets_length},
      split="train", shuffle=True, seed=0, use_cached=False)
  vocabulary = vocab.get_vocabulary()
  out = []
  for ex in ds.take(args.examples).as_numpy_iterator():
    text = {k: vocabulary.decode([int(t) for t in ex[k] if t > 1]) for k in ("inputs", "targets")}
    out.append({"inputs": ex["inputs"], "targets": ex["targets"], "text": text})
  return out


def packed_rows(examples: list[dict], args) -> dict[str, np.ndarray]:
  """The examples packed into [rows, length] arrays, as the training pipeline packs."""
  return packing.pack_examples([(e["inputs"], e["targets"]) for e in examples],
                               {"inputs": args.inputs_length, "targets": args.targets_length})


def t5jax_batches(rows: dict[str, np.ndarray], per_step: int) -> list[dict[str, np.ndarray]]:
  """Steps of per_step rows; the last one filled with all-zero rows (no loss), as
  the pipeline's final batch is."""
  n = len(rows["encoder_input_tokens"])
  out = []
  for start in range(0, n, per_step):
    batch = {k: v[start:start + per_step] for k, v in rows.items()}
    pad = per_step - len(batch["encoder_input_tokens"])
    out.append({k: np.pad(v, ((0, pad), (0, 0))) for k, v in batch.items()})
  return out


def hf_batches(examples: list[dict], tokenizer, model, args) -> list[dict]:
  """Tokenized text, batches of --batch examples padded by DataCollatorForSeq2Seq."""
  import transformers
  enc = tokenizer([e["text"]["inputs"] for e in examples], max_length=args.inputs_length,
                  truncation=True)
  labels = tokenizer(text_target=[e["text"]["targets"] for e in examples],
                     max_length=args.targets_length, truncation=True)["input_ids"]
  features = [{"input_ids": i, "attention_mask": m, "labels": l}
              for i, m, l in zip(enc["input_ids"], enc["attention_mask"], labels)]
  collator = transformers.DataCollatorForSeq2Seq(tokenizer, model=model, padding="longest",
                                                 return_tensors="pt")
  return [collator(features[i:i + args.batch]) for i in range(0, len(features), args.batch)]


def t5jax_trainer(cfg, first_batch):
  """(step(batch), compile seconds): the jitted train step on this model config."""
  model = t5.Transformer(cfg)
  opt_cfg = optim.OptimizerConfig(name="adafactor")
  tx = optim.make_optimizer(opt_cfg)
  loss_cfg = losses.LossConfig()
  mesh = partitioning.make_mesh(partitioning.MeshConfig(data=-1))
  b, s = first_batch["encoder_input_tokens"].shape
  with partitioning.sharding_context(mesh):
    state, shardings = train_step.create_train_state(
        model, tx, mesh, seed=0, inputs_length=s,
        targets_length=first_batch["decoder_target_tokens"].shape[1])
    step = train_step.jit_train_step(
        mesh, shardings, train_step.StepSettings(
            model=model, tx=tx, loss_cfg=loss_cfg,
            task_weights_k=loss_cfg.weights_vector(["bench"]), microbatches=1,
            schedule=optim.learning_rate_schedule(opt_cfg)))
  holder = {"state": state}

  def run(batch_np):
    with partitioning.sharding_context(mesh):
      batch = partitioning.host_batch_to_global(batch_np, mesh)
      holder["state"], metrics = step(holder["state"], batch)
      jax.block_until_ready(metrics)
    return float(metrics["loss"])

  start = time.perf_counter()
  run(first_batch)  # compiles; the same shape serves every step
  return run, time.perf_counter() - start


def hf_trainer(cfg, args):
  """(model, step(batch)): HF T5 in eager PyTorch with T5's Adafactor, as
  benchmarks/train_step.py sets it up."""
  import torch
  import transformers
  from transformers.optimization import Adafactor
  torch.set_num_threads(args.torch_threads or len(os.sched_getaffinity(0)))
  torch.manual_seed(0)
  model = transformers.T5ForConditionalGeneration(train_step_bench.hf_config(cfg))
  if not cfg.tie_word_embeddings:  # transformers 5 ties lm_head; T5 1.1 has its own
    model.lm_head.weight = torch.nn.Parameter(
        torch.randn_like(model.shared.weight) * cfg.d_model**-0.5)
  model.train()
  opt = Adafactor(model.parameters(), lr=0.01, relative_step=False, scale_parameter=True,
                  warmup_init=False, clip_threshold=1.0, decay_rate=-0.8, beta1=None)

  def run(batch):
    loss = model(**batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()
  return model, run


def hf_tokenizer():
  """T5Tokenizer from the shipped spiece.model (the ids SeqIO's vocabulary gives)."""
  import transformers
  path = tempfile.mkdtemp()
  try:
    shutil.copy(vocab.get_vocabulary().sentencepiece_model_file, path)
    return transformers.T5Tokenizer.from_pretrained(path, extra_ids=100)
  finally:
    shutil.rmtree(path)


def one_pass(step, batches) -> tuple[float, float]:
  """(seconds, last loss) of one step per batch, in order."""
  start = time.perf_counter()
  loss = float("nan")
  for batch in batches:
    loss = step(batch)
  return time.perf_counter() - start, loss


def padding_fraction(real: int, slots: int) -> float:
  return 1.0 - real / slots


def main(argv=None):
  args = parse_args(argv)
  cfg = model_config.get_config(args.model, dropout_rate=0.0, dtype="float32")
  if args.layers:
    cfg = cfg.replace(num_encoder_layers=args.layers, num_decoder_layers=args.layers)
  examples = load_examples(args)
  n = len(examples)
  rows = packed_rows(examples, args)
  num_rows = len(rows["encoder_input_tokens"])
  rows_per_step = max(1, round(num_rows * args.batch / n))
  ours_batches = t5jax_batches(rows, rows_per_step)
  tokenizer = hf_tokenizer()
  hf_model, hf_step = hf_trainer(cfg, args)
  theirs_batches = hf_batches(examples, tokenizer, hf_model, args)
  ours_step, compile_s = t5jax_trainer(cfg, ours_batches[0])
  hf_step(theirs_batches[0])  # warm-up, untimed, as the t5jax compile step is

  times = {"t5jax": [], "hf": []}
  losses_last = {}
  for _ in range(args.rounds):
    for name, step, batches in (("t5jax", ours_step, ours_batches),
                                ("hf", hf_step, theirs_batches)):
      seconds, losses_last[name] = one_pass(step, batches)
      times[name].append(seconds)

  seg = rows["decoder_segment_ids"]
  ours_examples = int(sum(len(np.unique(r[r > 0])) for r in seg))
  ours_targets = int(rows["decoder_loss_weights"].sum())
  ours_inputs = int((rows["encoder_input_tokens"] > 0).sum())
  hf_targets = sum(int((b["labels"] != -100).sum()) for b in theirs_batches)
  hf_inputs = sum(int(b["attention_mask"].sum()) for b in theirs_batches)
  hf_target_slots = sum(b["labels"].numel() for b in theirs_batches)
  hf_input_slots = sum(b["input_ids"].numel() for b in theirs_batches)
  slots = len(ours_batches) * rows_per_step
  sides = {}
  for name, examples_n, targets, enc_pad, dec_pad, steps in (
      ("t5jax", ours_examples, ours_targets,
       padding_fraction(ours_inputs, slots * args.inputs_length),
       padding_fraction(ours_targets, slots * args.targets_length), len(ours_batches)),
      ("hf", n, hf_targets, padding_fraction(hf_inputs, hf_input_slots),
       padding_fraction(hf_targets, hf_target_slots), len(theirs_batches))):
    s = statistics.median(times[name])
    sides[name] = {"pass_s": s, "pass_times_s": times[name], "steps": steps,
                   "examples": examples_n, "examples_per_s": examples_n / s,
                   "target_tokens": targets, "target_tokens_per_s": targets / s,
                   "encoder_padding": enc_pad, "decoder_padding": dec_pad,
                   "last_loss": losses_last[name]}
  ratio = sides["t5jax"]["examples_per_s"] / sides["hf"]["examples_per_s"]
  import torch
  info = decode_bench.machine()
  result = {"benchmark": "end_to_end", "model": args.model, "layers": args.layers,
            "mixture": args.mixture, "lengths": [args.inputs_length, args.targets_length],
            "examples": n, "batch_examples": args.batch, "t5jax_rows_per_step": rows_per_step,
            "t5jax_compile_s": compile_s, "torch_threads": torch.get_num_threads(),
            "machine": info, "t5jax": sides["t5jax"], "hf": sides["hf"],
            "t5jax_over_hf_examples_per_s": ratio}

  print(f"\n{args.model} (layers={args.layers or 'all'}) float32 on {args.mixture}, "
        f"{n} examples at {args.inputs_length}/{args.targets_length}; HF batches of "
        f"{args.batch} examples, t5jax {rows_per_step} packed rows per step; {info['cpu']} "
        f"({info['affinity']} cores, load {info['loadavg_1m']:.1f}), "
        f"{torch.get_num_threads()} torch threads, {args.rounds} round(s)")
  print("| side  | steps | pass s | examples/s | target tok/s | enc padding | dec padding |")
  print("|-------|------:|-------:|-----------:|-------------:|------------:|------------:|")
  for name, r in sides.items():
    print(f"| {name:5} | {r['steps']:5} | {r['pass_s']:6.1f} | {r['examples_per_s']:10.2f} | "
          f"{r['target_tokens_per_s']:12,.0f} | {r['encoder_padding']:11.1%} | "
          f"{r['decoder_padding']:11.1%} |")
  print(f"t5jax / HF examples/s: {ratio:.2f}x (t5jax compile {compile_s:.1f} s, not counted)")
  report.emit_json(result, args.json_out)
  return result


if __name__ == "__main__":
  main()
