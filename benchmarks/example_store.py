"""The example-store build and read at corpus scale, measured in one run.

    python benchmarks/example_store.py --sizes_gb 0.25 1 4 --workers 1 2 --out results/example_store.jsonl

For each size, a plain-text corpus (documents of real English sentences from the shipped
WikiText-2, one document a line, in 64 MB files) is synthesized, then `t5jax cache` builds
its span-corruption store with Beam's DirectRunner on each number of workers, while the
process tree's resident memory is sampled from /proc: build seconds, tokens/s, peak RSS of
the largest process and of the whole tree, store bytes per token. In the same run:

* the limit: SentencePiece alone (its Python `encode` over the same lines, batched, one
  thread per process) on 1 and on N processes;
* a build killed (SIGKILL to the whole process tree) at half its shards, then resumed: the
  resumed store's shards (counts and sha256) equal the uninterrupted build's;
* reads: batches of 256 rows of span corruption (512/114 tokens) from the store of the
  smallest size on a real GCS API server on localhost against the same store on local disk
  (first batch, then sustained examples/s), with the server sharing the reader's cores and
  with the server on a core of its own.

Each result is one JSON line; a summary table ends the run.
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
FILE_BYTES = 64 << 20


def _sentences() -> list[str]:
  text = []
  for name in ("test", "valid"):
    with gzip.open(REPO / f"t5jax/assets/text/wikitext2/{name}.txt.gz", "rt",
                   encoding="utf-8") as f:
      text += [l.strip() for l in f if len(l.strip()) > 40 and not l.strip().startswith("=")]
  return text


def synthesize(directory: pathlib.Path, gb: float, seed: int = 0) -> dict:
  """Writes ~gb GB of documents (3-12 random WikiText-2 paragraphs each) in 64 MB files."""
  directory.mkdir(parents=True, exist_ok=True)
  paragraphs = np.array(_sentences(), dtype=object)
  rng = np.random.default_rng(seed)
  target, written, docs, part = int(gb * 1e9), 0, 0, 0
  start = time.time()
  while written < target:
    with open(directory / f"part-{part:05d}.txt", "w", encoding="utf-8") as f:
      size = 0
      while size < FILE_BYTES and written + size < target:
        counts = rng.integers(3, 13, 512)
        picks = paragraphs[rng.integers(0, len(paragraphs), counts.sum())]
        bounds = np.concatenate([[0], np.cumsum(counts)])
        block = "".join(" ".join(picks[a:b]) + "\n" for a, b in zip(bounds[:-1], bounds[1:]))
        f.write(block)
        size += len(block.encode())
        docs += len(counts)
    written += size
    part += 1
  return {"bytes": written, "documents": docs, "files": part,
          "synthesis_seconds": round(time.time() - start, 1)}


def _tree(pid: int) -> list[int]:
  """pid and all its descendants (from /proc)."""
  children: dict[int, list[int]] = {}
  for entry in os.listdir("/proc"):
    if entry.isdigit():
      try:
        with open(f"/proc/{entry}/stat") as f:
          ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
      except (OSError, ValueError, IndexError):
        pass
  out, todo = [], [pid]
  while todo:
    p = todo.pop()
    out.append(p)
    todo += children.get(p, [])
  return out


def _rss(pid: int) -> int:
  try:
    with open(f"/proc/{pid}/status") as f:
      for line in f:
        if line.startswith("VmRSS:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return 0


def _run_sampled(command: list[str], env: dict, cwd: str, kill_when=None) -> dict:
  """Runs command, sampling the RSS of its process tree every 0.5 s; kill_when() -> True
  SIGKILLs the whole tree."""
  start = time.time()
  proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True)
  peak_one = peak_tree = 0
  killed = False
  while proc.poll() is None:
    sizes = [_rss(p) for p in _tree(proc.pid)]
    peak_one, peak_tree = max(peak_one, max(sizes)), max(peak_tree, sum(sizes))
    if kill_when is not None and kill_when():
      os.killpg(proc.pid, signal.SIGKILL)
      killed = True
      break
    time.sleep(0.5)
  out, err = proc.communicate()
  if not killed and proc.returncode:
    raise RuntimeError(f"{' '.join(command)} failed:\n{err[-3000:]}")
  return {"seconds": time.time() - start, "peak_rss_largest_mb": peak_one / 2**20,
          "peak_rss_tree_mb": peak_tree / 2**20, "stdout": out, "stderr": err,
          "killed": killed}


def _sp_worker(args):
  lines, model = args
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  sp = spm.SentencePieceProcessor(model_file=model)
  start = time.time()
  n = 0
  for i in range(0, len(lines), 1024):
    n += sum(len(x) for x in sp.encode(lines[i:i + 1024], num_threads=1))
  return n, time.time() - start


def sentencepiece_rate(corpus: pathlib.Path, processes: int, mb: int = 24) -> dict:
  """Tokens/s of SentencePiece alone over the corpus's first `mb` MB per process."""
  model = str(REPO / "t5jax/assets/t5_spm/spiece.model")
  files = sorted(corpus.glob("*.txt"))
  chunks = []
  with open(files[0], encoding="utf-8") as f:
    for _ in range(processes):
      chunks.append((f.readlines(mb << 20), model))
  with multiprocessing.get_context("spawn").Pool(processes) as pool:
    start = time.time()
    results = pool.map(_sp_worker, chunks)
    wall = time.time() - start
  tokens = sum(n for n, _ in results)
  return {"processes": processes, "tokens": tokens,
          "tokens_per_s": tokens / max(s for _, s in results), "wall_s": wall}


def _module(directory: pathlib.Path, corpus: pathlib.Path) -> None:
  (directory / "bench_corpus.py").write_text(
      "from t5jax.data import user_tasks\n"
      f"user_tasks.register_text_span_corruption_task('bench_corpus', '{corpus}/*.txt')\n")


def _cache(work: pathlib.Path, data_dir: str, workers: int, extra=(), kill_when=None) -> dict:
  env = {**os.environ, "T5JAX_DATA_DIR": data_dir, "PYTHONPATH": str(REPO)}
  command = [sys.executable, "-m", "t5jax", "cache", "--task", "bench_corpus", "--module",
             "bench_corpus", "--workers", str(workers), "--progress_seconds", "30", *extra]
  return _run_sampled(command, env, str(work), kill_when)


def _manifest(data_dir: str) -> tuple[str, dict]:
  root = pathlib.Path(data_dir) / "t5jax_examples" / "bench_corpus"
  location = next(root.glob("train-*"))
  return str(location), json.loads((location / "manifest.json").read_text())


def build_rows(work: pathlib.Path, corpus: pathlib.Path, gb: float, workers: int) -> dict:
  data_dir = str(work / f"data-{gb}-{workers}")
  result = _cache(work, data_dir, workers)
  _, manifest = _manifest(data_dir)
  tokens = manifest["num_tokens"]["targets"]
  shutil.rmtree(data_dir)
  return {"kind": "build", "gb": gb, "workers": workers, "seconds": round(result["seconds"], 1),
          "tokens": tokens, "examples": manifest["num_examples"],
          "shards": len(manifest["shards"]),
          "tokens_per_s": tokens / result["seconds"],
          "peak_rss_largest_mb": round(result["peak_rss_largest_mb"]),
          "peak_rss_tree_mb": round(result["peak_rss_tree_mb"]),
          "store_bytes": manifest["bytes"], "bytes_per_token": manifest["bytes"] / tokens}


def kill_and_resume(work: pathlib.Path, workers: int) -> dict:
  whole = str(work / "data-whole")
  _cache(work, whole, workers)
  _, reference = _manifest(whole)
  data_dir = str(work / "data-killed")
  half = len(reference["shards"]) // 2

  def commits() -> int:
    found = list(pathlib.Path(data_dir).glob("t5jax_examples/bench_corpus/train-*/commits/*"))
    return len(found)

  first = _cache(work, data_dir, workers, kill_when=lambda: commits() >= half)
  done = commits()
  second = _cache(work, data_dir, workers)
  _, resumed = _manifest(data_dir)
  shutil.rmtree(whole)
  shutil.rmtree(data_dir)
  return {"kind": "kill_resume", "workers": workers, "shards": len(reference["shards"]),
          "killed_after_s": round(first["seconds"], 1), "committed_at_kill": done,
          "resume_s": round(second["seconds"], 1),
          "same_store": resumed["shards"] == reference["shards"]}


def read_rates(work: pathlib.Path, local_dir: str, batches: int) -> list[dict]:
  """Span-corruption batches of 256 rows from the local store and the same store on GCS.

  Measured twice: with the server and the reader sharing every core, and with the server
  on a core of its own and the reader on the others (GCS runs on Google's machines, not on
  the host that reads; both stores are read with the same cores)."""
  sys.path.insert(0, str(REPO / "tests"))
  import gcs_server  # pylint: disable=g-import-not-at-top
  url = gcs_server.start()
  gcs_dir = f"gs://{gcs_server.BUCKET}/bench"
  # The same store on the GCS server: built there by the same command.
  _cache(work, gcs_dir, 2)
  cores = sorted(os.sched_getaffinity(0))
  rows = []
  for layout in ("shared", "server_own_core"):
    reader_cores = cores if layout == "shared" else cores[:-1]
    os.sched_setaffinity(gcs_server.pid(), cores if layout == "shared" else cores[-1:])
    for name, data_dir in (("local", local_dir), ("gcs", gcs_dir)):
      rows.append({"kind": "read", "store": name, "cores": layout,
                   "reader_cores": len(reader_cores), "rows": 256, "batches": batches,
                   **_read_rate(work, data_dir, url, batches, reader_cores)})
  os.sched_setaffinity(gcs_server.pid(), cores)
  return rows


def _read_rate(work: pathlib.Path, data_dir: str, url: str, batches: int,
               cores: list[int]) -> dict:
  """First batch seconds and sustained examples/s of a fresh reader process on `cores`."""
  env = {**os.environ, "T5JAX_DATA_DIR": data_dir, "PYTHONPATH": str(REPO),
         "STORAGE_EMULATOR_HOST": url}
  code = (
      "import sys, time, json, itertools\n"
      f"sys.path.insert(0, {str(work)!r})\n"
      "import bench_corpus\n"
      "from t5jax.data import pipeline\n"
      "spec = pipeline.InputSpec('bench_corpus', inputs_length=512, targets_length=114,"
      " pack=False, num_workers=0)\n"
      "start = time.time(); it = pipeline.make_batches(spec, 256); next(it)\n"
      "first = time.time() - start; start = time.time()\n"
      f"for _ in range({batches}): next(it)\n"
      f"print(json.dumps({{'first_batch_s': first, 'examples_per_s': {batches} * 256 / "
      "(time.time() - start)}))\n")
  out = subprocess.run([sys.executable, "-c", code], env=env, cwd=str(work),
                       capture_output=True, text=True, check=True,
                       preexec_fn=lambda: os.sched_setaffinity(0, cores)).stdout
  return json.loads(out.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes_gb", type=float, nargs="+", default=[0.25, 1.0, 4.0])
  parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
  parser.add_argument("--one_worker_up_to_gb", type=float, default=1e9,
                      help="skip the 1-worker build of larger corpora (time)")
  parser.add_argument("--read_batches", type=int, default=60)
  parser.add_argument("--work", default=None, help="scratch dir (default: a temp dir)")
  parser.add_argument("--out", default=None, help="append JSON lines here")
  args = parser.parse_args()
  work = pathlib.Path(args.work or tempfile.mkdtemp(prefix="t5jax-cache-bench-"))
  work.mkdir(parents=True, exist_ok=True)
  results = []

  def emit(row):
    row = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}
    results.append(row)
    print(json.dumps(row), flush=True)
    if args.out:
      with open(args.out, "a") as f:
        f.write(json.dumps(row) + "\n")

  for i, gb in enumerate(sorted(args.sizes_gb)):
    corpus = work / f"corpus-{gb}"
    emit({"kind": "corpus", "gb": gb, **synthesize(corpus, gb)})
    _module(work, corpus)
    if i == 0:
      for p in sorted(set([1] + args.workers)):
        emit({"kind": "sentencepiece", **sentencepiece_rate(corpus, p)})
    for w in args.workers:
      if w == 1 and gb > args.one_worker_up_to_gb:
        continue
      emit(build_rows(work, corpus, gb, w))
    if i == 0:
      emit(kill_and_resume(work, max(args.workers)))
      local = str(work / "data-read")
      _cache(work, local, max(args.workers))
      for row in read_rates(work, local, args.read_batches):
        emit(row)
      shutil.rmtree(local)
    shutil.rmtree(corpus)
  for r in results:
    if r["kind"] == "read":
      print(f"read {r['store']:5s} cores {r['cores']:15s} {r['examples_per_s']:8.0f} examples/s")
  print("\nkind          size  workers  seconds  M tok/s  peak RSS largest/tree MB  B/token")
  for r in results:
    if r["kind"] == "build":
      print(f"build      {r['gb']:6.2f} GB  {r['workers']:5d}  {r['seconds']:8.1f}  "
            f"{r['tokens_per_s'] / 1e6:7.2f}  {r['peak_rss_largest_mb']:8d} / "
            f"{r['peak_rss_tree_mb']:<8d}  {r['bytes_per_token']:.3f}")


if __name__ == "__main__":
  main()
