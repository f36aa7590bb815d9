"""`t5jax compile --topology TYPE --fit`: the search's estimates, and the search with libtpu."""

import dataclasses
import glob
import importlib.util
import json
import os
import subprocess
import sys

import gin
import pytest

from t5jax import config as gin_config
from t5jax.parallel import topology
from t5jax.train import run_config
from t5jax.train.fit import cost, pricing, reports, search, writers

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None


def _train_config(files, bindings=()):
  gin.clear_config()
  gin_config.parse_gin(files, list(bindings))
  try:
    return run_config.TrainConfig()
  finally:
    gin.clear_config()


@pytest.fixture(scope="module")
def base_pretrain():
  return _train_config(["runs/pretrain.gin", "models/t5_1_1_base.gin", "mesh/fsdp.gin"])


def test_every_candidate_splits_the_batch_evenly(base_pretrain):
  chips = topology.slice_of("v5p-32").chips  # 16
  settings = cost.candidates(base_pretrain, chips)
  assert {s.remat_policy for s in settings} == {"none", "minimal", "full"}
  assert {s.tensor for s in settings} == {1, 2, 4}  # 12 heads: a tensor split of 8 does not divide
  assert any(s.replicated for s in settings) and any(s.attention_query_block for s in settings)
  for s in settings:
    shards = chips // s.tensor
    assert base_pretrain.batch_size % (s.microbatches * shards) == 0, s


def test_estimates_trade_memory_for_time_the_right_way(base_pretrain):
  chip, chips = topology.CHIPS["v5p"], 4
  plain = cost.Setting()
  counts = cost.parameter_counts(base_pretrain)

  def est(**changes):
    s = dataclasses.replace(plain, **changes)
    state, act = cost.estimate_bytes(base_pretrain, s, chips, counts)
    return state, act, cost.estimate_seconds(base_pretrain, s, chip, chips, counts)

  state, act, seconds = est()
  # State: fp32 parameters + Adafactor + the gradient, sharded over the 4 chips.
  params = counts.total  # every kernel, norm and relative bias of the model's own init
  assert params == counts.trained == 247_577_856  # T5 1.1 base, as libtpu's reports count it
  assert state == pytest.approx(params * 8.1 / 4)
  full_state, full_act, full_s = est(remat_policy="full")
  assert full_state == state and full_act < act / 5 and full_s == pytest.approx(seconds * 4 / 3,
                                                                                 rel=0.05)
  _, micro_act, micro_s = est(microbatches=2)
  assert micro_act == pytest.approx(act / 2) and micro_s > seconds
  _, block_act, block_s = est(attention_query_block=128)
  assert block_act < act and block_s > seconds
  replicated_state, _, _ = est(replicated=True)
  assert replicated_state == pytest.approx(state * chips)


def test_a_lora_run_is_estimated_with_its_base_frozen(base_pretrain):
  lora = _train_config(["runs/pretrain.gin", "models/t5_1_1_base.gin", "mesh/fsdp.gin",
                        "runs/lora.gin"])
  full, counts = cost.parameter_counts(base_pretrain), cost.parameter_counts(lora)
  assert full.trained == full.total
  # LoRA r=8 on q and v of every attention: 884,736 trained (docs/performance/peft.md).
  assert counts.trained == 884_736  # (the analytic count leaves out norms and biases: 0.02%)
  assert counts.total - counts.trained == pytest.approx(full.total, rel=1e-3)
  chip, chips, plain = topology.CHIPS["v5p"], 4, cost.Setting()
  state, act = cost.estimate_bytes(lora, plain, chips, counts)
  # fp32 parameters; AdamW's two moments and the gradient for the trained ones only.
  assert state == pytest.approx((4 * counts.total + 12 * counts.trained) / chips)
  full_state, full_act = cost.estimate_bytes(base_pretrain, plain, chips, full)
  assert state < full_state / 1.9 and act == pytest.approx(full_act)
  seconds = cost.estimate_seconds(lora, plain, chip, chips, counts)
  full_seconds = cost.estimate_seconds(base_pretrain, plain, chip, chips, full)
  assert 0.6 < seconds / full_seconds < 0.75  # No weight gradients for the frozen base.


@pytest.mark.parametrize("flags, message", [
    (["--devices", "4", "--fit"], "--fit searches settings with libtpu's compiler: give the "
     "slice with --topology TYPE (e.g. --topology v5p-8)."),
    (["--topology", "v5p-8", "--fit_recipe=r.gin"],
     "--fit_recipe writes the setting --fit chooses: add --fit."),
])
def test_fit_flags_misused_one_line(flags, message):
  result = subprocess.run([sys.executable, "-m", "t5jax", "compile", *flags],
                          env={**os.environ, "PYTHONPATH": REPO}, capture_output=True,
                          text=True, timeout=300, cwd=REPO)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == f"error: {message}"


def _t5jax(args, cache):
  env = {**os.environ, "PYTHONPATH": REPO, "T5JAX_COMPILE_CACHE": str(cache)}
  for name in ("XLA_FLAGS", "JAX_PLATFORMS"):
    env.pop(name, None)
  return subprocess.run([sys.executable, "-m", "t5jax", "compile", *args], env=env,
                        capture_output=True, text=True, timeout=900, cwd=REPO)


@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu is not installed: pip install 't5jax[tpu]'")
def test_fit_finds_a_setting_that_fits_and_its_bindings_reproduce_it(tmp_path):
  # A real search with libtpu, small enough for the suite: t5_1_1_tiny, 64 x 128/128, on 4
  # v5e chips, two compiles (the decisions over settings that miss: the test below).
  bindings = ["TrainConfig.model='t5_1_1_tiny'", "TrainConfig.batch_size=64",
              "InputSpec.inputs_length=128", "InputSpec.targets_length=128"]
  model = ["--gin_file=runs/demo.gin", "--fit_compiles=2", *(f"--gin.{b}" for b in bindings)]
  recipe = tmp_path / "recipe.gin"
  first = _t5jax(["--topology", "v5litepod-4", "--fit", *model, f"--fit_recipe={recipe}"],
                 tmp_path)
  assert first.returncode == 0, first.stderr[-3000:]
  assert first.stderr == "", first.stderr  # libtpu's start-up lines are filtered out
  summary = json.loads(first.stdout.strip().splitlines()[-1])
  winner = summary["fit"]
  assert winner and winner["report"]["fits"] and winner["report"]["headroom"] >= 0.10
  assert winner["verdict"] == "fastest that fits"
  # The others missed the HBM or the headroom, or fit and are slower: by libtpu's roofline
  # where both have one (unscanned), else by the estimate.
  others = [t for t in summary["tried"] if t["verdict"] != "fastest that fits"]
  assert len(others) == len(summary["tried"]) - 1
  for trial in others:
    report = trial["report"]
    if report["headroom"] >= 0.10:
      assert trial["verdict"] == "fits; slower"
      if not (report["counted_once"] or winner["report"]["counted_once"]):
        assert report["roofline_step_s"] >= winner["report"]["roofline_step_s"]
      else:
        assert trial["estimated_s"] >= winner["estimated_s"]
  assert 1 <= len(summary["tried"]) <= 2
  assert "Fastest setting that fits with at least 10% headroom" in first.stdout
  assert "| setting | estimated ms |" in first.stdout

  # A second search compiles nothing: every report comes from the cache.
  again = _t5jax(["--topology", "v5litepod-4", "--fit", *model], tmp_path)
  assert again.returncode == 0, again.stderr[-3000:]
  repeat = json.loads(again.stdout.strip().splitlines()[-1])
  assert [t["cached"] for t in repeat["tried"]] == [True] * len(repeat["tried"])
  assert repeat["fit"]["setting"] == winner["setting"]

  # The printed bindings, pasted after the same flags, make the winner's configuration: the
  # same cache key, so the same compiled step.
  pasted = [b.replace('"', "").removeprefix("--gin.") for b in summary["gin_bindings"]]
  config = _train_config(["runs/demo.gin"], bindings + pasted)
  key = reports.cache_key(config, "v5litepod-4", 1)
  # So does the recipe file alone: it includes the gin file and repeats the bindings.
  assert f"Wrote {recipe}" in first.stdout
  assert reports.cache_key(_train_config([str(recipe)]), "v5litepod-4", 1) == key
  cached = json.loads((tmp_path / f"{key}.json").read_text())
  assert cached["peak_bytes_per_device"] == winner["report"]["peak_bytes_per_device"]
  assert cached["fits"] and cached["headroom"] >= 0.10


def test_among_close_estimates_the_compilers_roofline_picks(base_pretrain, tmp_path, monkeypatch):
  # The search's decisions over reports already in the cache (no compile): settings without
  # remat do not fit; the others fit, and their roofline favours the query block.
  monkeypatch.setenv("T5JAX_COMPILE_CACHE", str(tmp_path))
  chip = topology.CHIPS["v5p"]
  for s in cost.candidates(base_pretrain, 4):
    fits = s.remat_policy != "none"
    peak = (0.5 if fits else 1.2) * chip.hbm_bytes
    report = {"peak_bytes_per_device": peak, "argument_size_in_bytes": 2**30,
              "headroom": 1 - peak / chip.hbm_bytes, "fits": fits, "compiled": True,
              "compile_seconds": 1.0, "scan_layers": s.scan_layers, "traffic_known": True,
              "counted_once": s.scan_layers or s.microbatches > 1,
              "model_flops_per_device": 1e12 * s.microbatches,
              "roofline_step_s": 0.040 if s.attention_query_block else 0.050}
    key = reports.cache_key(s.apply(base_pretrain), "v5p-8", 1)
    (tmp_path / f"{key}.json").write_text(json.dumps(report))
    if s.microbatches > 1:  # its loop unrolled, for the whole step's roofline
      twin = pricing.cost_twin(base_pretrain, s)
      key = reports.cache_key(twin, "v5p-8", 1)
      (tmp_path / f"{key}.json").write_text(json.dumps(
          {**report, "counted_once": False, "xla_flops_per_device": 1e12 * s.microbatches,
           "xla_bytes_accessed_per_device": 0.03 * s.microbatches * chip.hbm_bandwidth}))
  lines = []
  winner, tried = search.search(base_pretrain, "v5p-8", max_compiles=12, log=lines.append)
  assert all(t.cached for t in tried)
  # A microbatched, unscanned setting that fits is priced over all its microbatches: 30 ms
  # of HBM traffic each, by its loop unrolled.
  twinned = [t for t in tried if t.setting.microbatches > 1 and not t.setting.scan_layers
             and t.report["fits"]]
  assert twinned and len(lines) == len(tried) + len(twinned)
  for t in twinned:
    assert t.report["roofline_step_s"] == pytest.approx(0.03 * t.setting.microbatches)
  first_fit = next(i for i, t in enumerate(tried) if t.report["fits"])
  assert all(t.verdict == "over HBM" for t in tried[:first_fit])
  assert winner.setting.remat_policy != "none" and winner.verdict == "fastest that fits"
  # Settings close to the first that fit were compiled too and compared: the winner's
  # roofline is the lowest of those that fit, and at least one that fit lost to it.
  fitting = [t for t in tried if t.report["fits"] and not t.report["counted_once"]]
  assert winner.report["roofline_step_s"] == min(t.report["roofline_step_s"] for t in fitting)
  assert winner.setting.attention_query_block
  assert any(t.verdict == "fits; slower" for t in tried)
  assert all(t.verdict in ("fits; slower", "over HBM") for t in tried if t is not winner)
  table = writers.format_table(winner, tried, base_pretrain, search.HEADROOM)
  assert "--gin.ModelSettings.remat_policy=" in table and winner.setting.label in table
  for t in twinned:
    assert f"| {t.report['roofline_step_s'] * 1e3:.1f} |" in table


def test_a_microbatched_step_gets_the_roofline_of_all_its_microbatches():
  # XLA counts the microbatch loop's body once; the whole step's FLOPs and traffic are its
  # cost twin's (the loop unrolled), its memory the step's own.
  chip = topology.CHIPS["v5p"]
  report = {"peak_bytes_per_device": 2**34, "model_flops_per_device": 4e14,
            "xla_flops_per_device": 1.1e14, "xla_bytes_accessed_per_device": 1e11,
            "counted_once": True}
  twin = {"xla_flops_per_device": 4.2e14, "xla_bytes_accessed_per_device": 2.4e12,
          "peak_bytes_per_device": 2**35}
  whole = {**report, **pricing.microbatch_roofline(report, twin, chip)}
  assert whole["xla_flops_per_device"] == 4.2e14 and whole["xla_bytes_accessed_per_device"] == 2.4e12
  assert whole["peak_bytes_per_device"] == 2**34
  assert not whole["counted_once"] and whole["roofline_from"] == "its microbatch loop unrolled"
  assert whole["roofline_step_s"] == pytest.approx(max(4.2e14 / chip.bf16_flops,
                                                       2.4e12 / chip.hbm_bandwidth))
  assert whole["roofline_mfu"] == pytest.approx(4e14 / (whole["roofline_step_s"] * chip.bf16_flops))


def test_the_cost_twin_counts_every_microbatch():
  # XLA's CPU compiler, tiny T5 on one device: in a loop, 4 microbatches' FLOPs are counted
  # as one; unrolled (the twin --fit compiles for the roofline) they are the whole step's,
  # what the same batch in one piece costs. (Cross-entropy from full logits: the fused one's
  # own loop over vocabulary blocks would be counted once a microbatch.)
  import jax  # pylint: disable=g-import-not-at-top
  from t5jax.train import aot  # pylint: disable=g-import-not-at-top
  config = _train_config(["runs/demo.gin"], ["TrainConfig.model='t5_1_1_tiny'",
                                             "TrainConfig.batch_size=16",
                                             "InputSpec.inputs_length=64",
                                             "InputSpec.targets_length=32",
                                             "LossConfig.fused_cross_entropy=False"])
  one_device = jax.devices()[:1]
  compile_one = lambda c: aot.compile_train_step(c, devices=one_device)
  whole = compile_one(config)["xla_flops_per_device"]
  looped = compile_one(dataclasses.replace(config, microbatches=4))
  twin = compile_one(pricing.cost_twin(config, cost.Setting(microbatches=4,
                                                                      replicated=True)))
  assert looped["counted_once"] and not twin["counted_once"]
  assert looped["xla_flops_per_device"] < 0.5 * whole
  assert twin["xla_flops_per_device"] == pytest.approx(whole, rel=0.03)


def test_a_compile_that_dies_is_named_by_how():
  killed = {"crashed": True, "exit_code": -9}  # what the OOM killer leaves: XXL on a 24 GB host
  assert writers.miss(killed, 0.1) == "compiler killed (SIGKILL: out of host memory?)"
  assert writers.miss({**killed, "exit_code": -6}, 0.1) == "compiler crashed (exit -6)"


def test_a_recipe_repeats_the_commands_bindings_and_the_setting_wins(base_pretrain, tmp_path):
  # The command's bindings come as typed (`X=Y` from --gin.X=Y, or `X = Y`); the recipe writes
  # each once as gin does, and where the command bound what the setting binds, the setting's.
  setting = cost.Setting("minimal", False, 128, 2, 1, False)
  report = {"peak_bytes_per_device": 2**34, "hbm_bytes_per_chip": 95 * 2**30, "headroom": 0.8,
            "counted_once": False, "roofline_step_s": 0.05, "roofline_mfu": 0.5}
  winner = search.Trial(setting, 0.05, 2**34, 0.0, 0.0, report=report)
  text = writers.recipe(winner, base_pretrain, "v5p-8", 1, ["runs/pretrain.gin"],
                           ["TrainConfig.num_steps=10", "InputSpec.inputs_length = 256",
                            "TrainConfig.microbatches =4"])
  body = [line for line in text.splitlines() if not line.startswith(("#", "include"))]
  assert body[:2] == ["TrainConfig.num_steps = 10", "InputSpec.inputs_length = 256"]
  assert body[2:] == setting.bindings(base_pretrain)
  assert "TrainConfig.microbatches = 2" in body and "TrainConfig.microbatches = 4" not in text
  path = tmp_path / "recipe.gin"
  path.write_text(text)
  config = _train_config([str(path)])
  assert (config.num_steps, config.data.inputs_length, config.microbatches) == (10, 256, 2)
  assert "roofline 50.0 ms a step, MFU at most 50%." in text
  twinned = {**report, "roofline_from": "its microbatch loop unrolled"}
  text = writers.recipe(search.Trial(setting, 0.05, 2**34, 0.0, 0.0, report=twinned),
                           base_pretrain, "v5p-8", 1, ["runs/pretrain.gin"])
  assert "roofline 50.0 ms a step (its microbatch loop unrolled), MFU at most 50%." in text


def _recipe_rows():
  rows = {}
  with open(os.path.join(REPO, "benchmarks", "results", "fit_recipes.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      rows[f"{row['accelerator_type']}/{row['model']}_{row['run']}.gin"] = row
  return rows


RECIPES = sorted(glob.glob("recipes/*/*.gin", root_dir=os.path.join(REPO, "gin_configs")))


@pytest.mark.parametrize("name", RECIPES)
def test_each_shipped_recipe_is_the_run_fit_chose(name):
  # gin_configs/recipes/TYPE/MODEL_RUN.gin, alone, is the run at T5's batch with the setting
  # `--fit` chose on that slice (benchmarks/results/fit_recipes.jsonl, its last row).
  row = _recipe_rows()[name.removeprefix("recipes/")]
  config = _train_config([name])
  assert (config.model, config.batch_size) == (row["model"], 128)
  assert (config.data.inputs_length, config.data.targets_length) == (512, 114)
  model = config.model_config()
  assert model.dropout_rate == (0.1 if row["run"] == "finetune" else 0.0)
  assert model.dtype == "bfloat16"  # as compiled: a finetune recipe says so over the CPU's float32
  setting = cost.Setting(**row["fit"]["setting"])
  assert setting.apply(config) == config  # every field the setting sets, the recipe sets
  # The recipe binds its setting's fields and, fine-tuning, the dtype; the rest it inherits
  # (runs/finetune.gin: float32 from runs/demo.gin, then dropout 0.1).
  inherited = {"dtype": "bfloat16", "dropout_rate": 0.1} if row["run"] == "finetune" else {}
  assert config.model_settings.changes() == {**inherited, **setting.model_changes()}
  assert config.model_overrides == {}


def test_the_recipes_cover_every_case_that_fit():
  assert {f"recipes/{k}" for k, row in _recipe_rows().items() if row["fit"]} == set(RECIPES)
