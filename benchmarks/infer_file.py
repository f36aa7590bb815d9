"""`t5jax infer` over a file of mixed-length lines against Hugging Face's batched
generate(), same weights, one process: sentences/s of both.

The file: the inputs of the first --lines examples of supervised_mix (shuffled
with seed 0; translation sentences, GLUE, dialogues, paper abstracts: 5 to 512
tokens), one JSON line each. The model: a random transformers T5 of a t5jax
size (untied output layer), its EOS output row scaled up so that outputs end at
different lengths as a trained model's do, saved with save_pretrained and
converted with `t5jax convert --from_hf`. Both sides decode greedily, at most
--max_decode_length tokens, --batch_size lines per batch:
  t5jax: `t5jax infer` (cli.main in this process), which sorts lines by length,
    pads batches to a few power-of-two shapes and writes outputs in input order;
    timed cold (checkpoint load and compiles included) and warm (a second call);
  HF: T5Tokenizer + T5ForConditionalGeneration.generate() over the lines in file
    order, padding each batch to its longest line, as transformers' docs batch
    seq2seq inference (transformers 5 has no text2text-generation pipeline).
torch runs one thread (--torch_threads). It prints both rates, the ratio, the
padding each batching leaves, how many predictions agree, and one JSON line.

  python benchmarks/infer_file.py --model t5_1_1_small --layers 2 --lines 1000 \\
      --batch_size 32 --max_decode_length 32 --torch_threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import numpy as np  # noqa: E402

from t5jax.cli import main as cli  # noqa: E402
from t5jax.decode import decoding, predictor as inference
from t5jax.data import vocab  # noqa: E402
from t5jax.model import config as model_config  # noqa: E402

import decode as decode_bench  # noqa: E402 (benchmarks/, beside this script)
import end_to_end  # noqa: E402
import report  # noqa: E402

EOS_BOOST = 3.0


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model", default="t5_1_1_small", choices=sorted(model_config.SIZES))
  p.add_argument("--layers", type=int, default=2, help="encoder and decoder depth (0: the size's)")
  p.add_argument("--lines", type=int, default=1000)
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--max_input_length", type=int, default=512)
  p.add_argument("--max_decode_length", type=int, default=32)
  p.add_argument("--torch_threads", type=int, default=1)
  p.add_argument("--json_out", default=None, help="append the JSON line to this file")
  return p.parse_args(argv)


def write_lines(path: str, args) -> list[str]:
  """The inputs of supervised_mix's first examples as a JSONL file; returns them."""
  spec = argparse.Namespace(mixture="supervised_mix", inputs_length=args.max_input_length,
                            targets_length=8, examples=args.lines)
  texts = [e["text"]["inputs"] for e in end_to_end.load_examples(spec)]
  with open(path, "w") as f:
    for text in texts:
      f.write(json.dumps({"inputs": text}) + "\n")
  return texts


def save_models(root: str, args) -> tuple[str, str]:
  """A random HF T5 (EOS row boosted) saved to root/hf and converted to root/t5jax."""
  import torch
  hf, _, _ = decode_bench.make_pair(argparse.Namespace(model=args.model, layers=args.layers,
                                                       dtype="float32"))
  with torch.no_grad():
    hf.lm_head.weight[decoding.EOS_ID] *= EOS_BOOST
  hf_dir, ours_dir = os.path.join(root, "hf"), os.path.join(root, "t5jax")
  hf.save_pretrained(hf_dir)
  shutil.copy(vocab.get_vocabulary().sentencepiece_model_file, hf_dir)
  if cli.main(["convert", f"--from_hf={hf_dir}", f"--out={ours_dir}"]):
    raise RuntimeError(f"t5jax convert --from_hf {hf_dir} failed")
  return hf_dir, ours_dir


def run_t5jax(ours_dir: str, src: str, out: str, args) -> float:
  start = time.perf_counter()
  code = cli.main(["infer", f"--checkpoint={ours_dir}", f"--input={src}", f"--output={out}",
                   f"--batch_size={args.batch_size}", f"--max_input_length={args.max_input_length}",
                   f"--max_decode_length={args.max_decode_length}"])
  if code:
    raise RuntimeError(f"t5jax infer exited with {code}")
  return time.perf_counter() - start


def run_hf(hf_dir: str, texts: list[str], args) -> tuple[float, list[str]]:
  """Seconds and predictions of batched generate() over the lines in file order."""
  import torch
  import transformers
  torch.set_num_threads(args.torch_threads)
  tokenizer = transformers.T5Tokenizer.from_pretrained(hf_dir)
  model = transformers.T5ForConditionalGeneration.from_pretrained(hf_dir).eval()

  def batch(lines):
    enc = tokenizer(lines, padding=True, truncation=True, max_length=args.max_input_length,
                    return_tensors="pt")
    with torch.no_grad():
      ids = model.generate(**enc, do_sample=False, num_beams=1,
                           max_new_tokens=args.max_decode_length)
    return tokenizer.batch_decode(ids, skip_special_tokens=True)

  batch(texts[:args.batch_size])  # warm-up, untimed
  start = time.perf_counter()
  preds = []
  for i in range(0, len(texts), args.batch_size):
    preds.extend(batch(texts[i:i + args.batch_size]))
  return time.perf_counter() - start, preds


def padding(lengths: list[int], batches: list[list[int]], width) -> float:
  """Fraction of encoder slots that are padding when batches are padded by width()."""
  real = sum(lengths)
  slots = sum(width(len(b), max(lengths[i] for i in b)) for b in batches)
  return 1.0 - real / slots


def main(argv=None):
  args = parse_args(argv)
  root = tempfile.mkdtemp(prefix="infer_file_")
  try:
    src, out = os.path.join(root, "lines.jsonl"), os.path.join(root, "out.jsonl")
    texts = write_lines(src, args)
    hf_dir, ours_dir = save_models(root, args)
    cold_s = run_t5jax(ours_dir, src, out, args)
    warm_s = run_t5jax(ours_dir, src, out, args)
    ours = [json.loads(line)["prediction"] for line in open(out)]
    hf_s, theirs = run_hf(hf_dir, texts, args)
  finally:
    shutil.rmtree(root)

  vocabulary = vocab.get_vocabulary()
  lengths = [min(len(vocabulary.encode(t)) + 1, args.max_input_length) for t in texts]
  b = args.batch_size
  in_order = [list(range(i, min(i + b, len(texts)))) for i in range(0, len(texts), b)]
  pad_ours = padding(lengths, inference.length_batches(lengths, b),
                     lambda rows, longest: np.prod(inference.padded_shape(
                         rows, longest, b, args.max_input_length)))
  pad_hf = padding(lengths, in_order, lambda rows, longest: rows * longest)
  n = len(texts)
  info = decode_bench.machine()
  result = {"benchmark": "infer_file", "model": args.model, "layers": args.layers,
            "lines": n, "batch_size": b, "max_decode_length": args.max_decode_length,
            "torch_threads": args.torch_threads, "machine": info,
            "t5jax_cold_s": cold_s, "t5jax_warm_s": warm_s, "hf_s": hf_s,
            "t5jax_cold_sentences_per_s": n / cold_s, "t5jax_warm_sentences_per_s": n / warm_s,
            "hf_sentences_per_s": n / hf_s, "t5jax_cold_over_hf": hf_s / cold_s,
            "t5jax_warm_over_hf": hf_s / warm_s, "t5jax_encoder_padding": pad_ours,
            "hf_encoder_padding": pad_hf,
            "same_predictions": sum(a == c for a, c in zip(ours, theirs)),
            # SentencePiece shows ids HF's skip_special_tokens drops as " ⁇ ".
            "same_predictions_normalized": sum(
                " ".join(a.replace("\u2047", " ").split()) == " ".join(c.split())
                for a, c in zip(ours, theirs)),
            "first_difference": next(([i, a, c] for i, (a, c) in enumerate(zip(ours, theirs))
                                      if a != c), None),
            "input_tokens_min_median_max": [min(lengths), int(np.median(lengths)), max(lengths)]}
  print(f"\n{args.model} (layers={args.layers or 'all'}) float32, {n} lines of "
        f"supervised_mix inputs ({min(lengths)}-{max(lengths)} tokens, median "
        f"{int(np.median(lengths))}), batch {b}, greedy, at most {args.max_decode_length} "
        f"tokens; {info['cpu']} ({info['affinity']} cores, load {info['loadavg_1m']:.1f}), "
        f"HF {args.torch_threads} torch thread(s)")
  print("| side                  | seconds | sentences/s | encoder padding |")
  print("|-----------------------|--------:|------------:|----------------:|")
  for name, s, pad in (("t5jax infer, cold", cold_s, pad_ours), ("t5jax infer, warm", warm_s,
                                                                 pad_ours),
                       ("HF generate() batches", hf_s, pad_hf)):
    print(f"| {name:21} | {s:7.1f} | {n / s:11.2f} | {pad:15.1%} |")
  print(f"t5jax / HF sentences/s: cold {hf_s / cold_s:.2f}x, warm {hf_s / warm_s:.2f}x; "
        f"same prediction on {result['same_predictions']}/{n} lines")
  report.emit_json(result, args.json_out)
  return result


if __name__ == "__main__":
  main()
