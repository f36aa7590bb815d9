"""Inference and evaluation at any size: parameters restored straight into their shards on
a mesh of 8 fake CPU devices (FSDP, tensor parallel and data parallel), and two processes
on jax.distributed, decode and evaluate what one device does."""

import dataclasses
import json

import jax
import numpy as np
import pytest

import gcs_server
import hosts
from t5jax import checkpoint, fs
from t5jax.data import vocab
from t5jax.decode import decoding, evaluate
from t5jax.decode.predictor import Predictor
from t5jax.model import config as model_config, param_tree, t5
from t5jax.parallel import partitioning

INPUTS = ["translate English to French: A dog runs.",
          "translate English to German: Two cats sleep on a red mat in the sun.",
          "summarize: the quick brown fox jumps over the lazy dog", "cola sentence: Him saw.",
          "translate English to French: Children play.", "sst2 sentence: a fine film"]
EVAL = evaluate.EvalConfig(max_examples=6, inputs_length=32, targets_length=12, batch_size=4)
MESHES = {"fsdp8": partitioning.MeshConfig(data=1, fsdp=8),
          "dp2_fsdp2_tp2": partitioning.MeshConfig(data=2, fsdp=2, tensor=2)}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  """A random T5 1.0 tiny checkpoint (its embeddings shrunk so that greedy output varies)."""
  directory = tmp_path_factory.mktemp("ckpt")
  cfg = model_config.get_config("t5_1_0_tiny", dtype="float32", dropout_rate=0.0)
  tokens = np.ones((1, 8), np.int32)
  params = jax.tree.map(np.asarray, param_tree.strip_boxes(
      t5.Transformer(cfg).init(jax.random.key(0), tokens, tokens)["params"]))
  params["token_embedder"] = params["token_embedder"] * 0.05
  checkpoint.save_params(str(directory), params, {
      "model_config": dataclasses.asdict(cfg), "vocab": vocab.record(vocab.get_vocabulary(), None)})
  vocab.record(vocab.get_vocabulary(), str(directory))
  return directory


def _outputs(predictor):
  greedy = predictor.generate(INPUTS, max_decode_length=12, batch_size=4)
  beam = predictor.generate(INPUTS, max_decode_length=12, batch_size=4,
                            strategy=decoding.DecodeConfig("beam", num_beams=3))
  scores = predictor.score(INPUTS, ["Un chien.", "Zwei Katzen.", "fox", "unacceptable",
                                    "Des enfants.", "positive"], batch_size=4)
  return greedy, beam, scores


@pytest.fixture(scope="module")
def one_device(ckpt):
  predictor = Predictor.from_checkpoint(str(ckpt))
  return _outputs(predictor), evaluate.evaluate(predictor, EVAL, "multi30k_en_fr")


@pytest.mark.parametrize("name", sorted(MESHES))
def test_a_mesh_decodes_scores_and_evaluates_as_one_device(ckpt, one_device, name):
  mesh = partitioning.make_mesh(MESHES[name])
  predictor = Predictor.from_checkpoint(str(ckpt), mesh=mesh)
  # Restored into their shards: FSDP splits every embed-sharded matrix over 8 devices.
  embedding = predictor.params["token_embedder"]
  assert embedding.sharding.mesh.shape == mesh.shape
  shard_rows = {s.data.shape for s in embedding.addressable_shards}
  assert all(np.prod(shape) < np.prod(embedding.shape) for shape in shard_rows)
  (greedy, beam, scores), evaluation = _outputs(predictor), one_device[1]
  for ours, theirs in ((greedy, one_device[0][0]), (beam, one_device[0][1])):
    assert [g.tokens for g in ours] == [g.tokens for g in theirs]
    np.testing.assert_allclose([g.score for g in ours], [g.score for g in theirs], rtol=1e-5)
  np.testing.assert_allclose(scores, one_device[0][2], rtol=1e-5)
  got = evaluate.evaluate(predictor, EVAL, "multi30k_en_fr")
  assert [r["prediction"] for r in got.records["multi30k_en_fr"]] == \
      [r["prediction"] for r in evaluation.records["multi30k_en_fr"]]
  for key, value in evaluation.results["multi30k_en_fr"].items():
    assert got.results["multi30k_en_fr"][key] == pytest.approx(value, rel=1e-5), key


def test_parameters_in_bfloat16(ckpt, one_device):
  predictor = Predictor.from_checkpoint(str(ckpt), mesh=partitioning.make_mesh(MESHES["fsdp8"]),
                                        param_dtype="bfloat16")
  assert all(x.dtype == np.dtype("bfloat16") for x in jax.tree.leaves(predictor.params))


def test_two_processes_infer_and_evaluate_as_one(ckpt, one_device, tmp_path):
  """Two hosts (their own directories, 2 devices each) read the checkpoint from a bucket,
  each decodes its share of every batch, and process 0 writes what one device gives."""
  url = gcs_server.start()
  bucket = f"gs://{gcs_server.BUCKET}/{tmp_path.name}"
  for path in ckpt.rglob("*"):
    if path.is_file():
      fs.write_bytes(fs.join(bucket, "ckpt", str(path.relative_to(ckpt))), path.read_bytes())
  fs.write_text(fs.join(bucket, "in.txt"), "".join(line + "\n" for line in INPUTS))
  common = ["--checkpoint", f"{bucket}/ckpt", "--batch_size", "4"]
  outs = hosts.wait_all(hosts.launch(tmp_path, url, [
      "infer", *common, "--input", f"{bucket}/in.txt", "--output", f"{bucket}/out.jsonl",
      "--max_decode_length", "12"], num_processes=2))
  assert "mesh {'data': 4, 'fsdp': 1, 'tensor': 1}" in outs[0]
  records = [json.loads(line) for line in fs.read_text(f"{bucket}/out.jsonl").splitlines()]
  assert [r["prediction"] for r in records] == [g.text for g in one_device[0][0]]
  hosts.wait_all(hosts.launch(tmp_path, url, [
      "eval", *common, "--task", "multi30k_en_fr", "--max_examples", "6",
      "--max_input_length", "32", "--targets_length", "12", "--output_dir", f"{bucket}/eval"],
      num_processes=2))
  logged = [json.loads(line) for line in fs.read_text(
      f"{bucket}/eval/multi30k_en_fr-0.jsonl").splitlines()]
  assert [r["prediction"] for r in logged] == \
      [r["prediction"] for r in one_device[1].records["multi30k_en_fr"]]
  metrics = json.loads(fs.read_text(f"{bucket}/eval/metrics.jsonl").splitlines()[0])
  assert metrics["multi30k_en_fr/loss"] == pytest.approx(
      one_device[1].results["multi30k_en_fr"]["loss"], rel=1e-5)
