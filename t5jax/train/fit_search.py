"""`t5jax compile --topology TYPE --fit`: the fastest setting that fits a TPU slice.

The settings that trade memory for time: the remat policy, scanned layers, the attention's
query block, microbatches (gradient accumulation) and the FSDP/tensor split of a slice. A
libtpu compile of a full-depth model takes minutes on a small host, so the search is not a
grid. Every candidate gets an analytic step time (`estimate_seconds`) and peak memory per
chip (`estimate_bytes`); candidates are tried fastest first, and only those whose memory
estimate fits are compiled. Each compile calibrates the estimate (libtpu's temporaries over
the analytic ones, per remat policy), so a misjudged first guess corrects the rest. The first
candidate that compiles with at least `headroom` of the chip's HBM free is the first answer;
the settings estimated within `CLOSE` of it are compiled too, and libtpu's roofline (its own
FLOPs and HBM traffic) picks among those that fit. Every candidate not compiled is
estimated slower, or over the HBM. Compile reports are cached on disk by the
full configuration, so a second search, or a recipe benchmark, compiles nothing twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib

from t5jax.model import config as model_config
from t5jax.model.flops import model_flops_per_step
from t5jax.parallel import topology

HEADROOM = 0.10
# Part of the cache key: reports of an earlier t5jax that compiled a different program for
# the same configuration are not reused (2: CPU-only attention loops no longer leak into a
# step compiled on a CPU host for a TPU or GPU).
REPORT_VERSION = 2
# Step time relative to no remat (forward x 3): "full" recomputes the forward (x 4/3);
# "minimal" keeps the matmul outputs and recomputes only elementwise work and the scores.
REMAT_TIME = {"none": 1.0, "minimal": 1.04, "full": 4.0 / 3.0}
SCAN_TIME = 1.02         # a loop over layers: no fusion across layer boundaries
QUERY_BLOCK_TIME = 1.03  # each query block's scores computed again in the backward
QUERY_BLOCK = 128
CLOSE = 0.05  # settings estimated within 5% of the first that fits are compiled too
COLLECTIVES_HIDDEN = 0.5  # share of the collectives' time assumed overlapped with compute
# Fixed costs that make small slices of work slow: a layer's pass (kernel launches, a loop
# step) and a collective's latency, per microbatch.
LAYER_PASS_S = 20e-6
COLLECTIVE_LATENCY_S = 10e-6


@dataclasses.dataclass(frozen=True)
class Setting:
  """One point of the search: what `apply` changes in a TrainConfig."""
  remat_policy: str = "none"
  scan_layers: bool = False
  attention_query_block: int = 0
  microbatches: int = 1
  tensor: int = 1
  replicated: bool = False  # pure data parallelism: every chip holds the whole state

  @property
  def label(self) -> str:
    parts = [f"remat={self.remat_policy}", "scan" if self.scan_layers else "unrolled"]
    if self.attention_query_block:
      parts.append(f"qblock={self.attention_query_block}")
    parts.append(f"micro={self.microbatches}")
    parts.append("data-parallel" if self.replicated else f"fsdp tensor={self.tensor}")
    return " ".join(parts)

  def model_changes(self) -> dict:
    """The ModelSettings fields the setting sets."""
    return {"remat_policy": self.remat_policy, "scan_layers": self.scan_layers,
            "attention_query_block": self.attention_query_block}

  def mesh(self, config) -> dict:
    if self.replicated:
      return {"data": -1, "fsdp": 1, "tensor": 1}
    return {"data": max(config.mesh.data, 1), "fsdp": -1, "tensor": self.tensor}

  def apply(self, config):
    mesh = dataclasses.replace(config.mesh, **self.mesh(config))
    changes = self.model_changes()
    # model_overrides, applied after the settings, must not undo the setting's choices.
    overrides = {k: v for k, v in config.model_overrides.items() if k not in changes}
    return dataclasses.replace(
        config, model_settings=dataclasses.replace(config.model_settings, **changes),
        model_overrides=overrides, microbatches=self.microbatches, mesh=mesh)

  def bindings(self, config) -> list[str]:
    """The setting as gin bindings (`Configurable.field = value`)."""
    return [f"ModelSettings.{name} = {value!r}" for name, value in self.model_changes().items()
           ] + [f"TrainConfig.microbatches = {self.microbatches}"] + [
                f"MeshConfig.{axis} = {size}" for axis, size in self.mesh(config).items()]

  def gin_bindings(self, config) -> list[str]:
    """The bindings as command-line flags a user pastes."""
    flags = []
    for binding in self.bindings(config):
      name, value = binding.split(" = ", 1)
      quote = " " in value or "'" in value  # the shell keeps a string's quotes for gin
      flags.append(f'--gin.{name}="{value}"' if quote else f"--gin.{name}={value}")
    return flags


def candidates(config, chips: int) -> list[Setting]:
  """Every setting the search may try for `config` on `chips` chips (all valid shapes)."""
  cfg = config.model_config()
  data = max(config.mesh.data, 1)
  blocks = [0] + ([QUERY_BLOCK] if config.data.inputs_length > QUERY_BLOCK else [])
  splits = [(1, True)] + [(t, False) for t in (1, 2, 4, 8)]
  out = []
  for tensor, replicated in splits:
    if chips % (data * tensor) or cfg.num_heads % tensor or cfg.d_ff % tensor:
      continue
    shards = chips // tensor  # data x fsdp devices split the batch
    for micro in (1, 2, 4, 8, 16):
      if config.batch_size % micro or (config.batch_size // micro) % shards:
        continue
      for remat in model_config.REMAT_POLICIES:
        for scan in (False, True):
          for block in blocks:
            out.append(Setting(remat, scan, block, micro, tensor, replicated))
  return out


@dataclasses.dataclass(frozen=True)
class Counts:
  """A run's parameters: all of them, and those it trains."""
  total: float
  trained: float


def parameter_counts(config) -> Counts:
  """All parameters and the trained ones: a PEFT run (LoRA, prompts; its base frozen) or
  an `OptimizerConfig.trainable` pattern trains only the parameters it matches, which alone
  get optimizer state, gradients and their reduction."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from t5jax.model import param_tree, trainable  # pylint: disable=g-import-not-at-top
  from t5jax.train import loop  # pylint: disable=g-import-not-at-top
  model = loop.build_model(config)
  pattern = loop.optimizer_config(config, model).trainable
  shapes = param_tree.abstract_params(model)  # traced, not allocated: every norm and bias
  sizes = jax.tree.leaves(jax.tree.map(lambda x: int(np.prod(x.shape)), shapes))
  if not pattern:
    return Counts(sum(sizes), sum(sizes))
  trains = jax.tree.leaves(trainable.mask(shapes, pattern))
  return Counts(sum(sizes), sum(n for n, t in zip(sizes, trains) if t))


def _state_bytes(config, counts: Counts) -> float:
  # fp32 parameters; for the trained ones, optimizer state (Adafactor's factored moments are
  # near nothing; Adam's are two fp32 copies) + the fp32 gradient while it is applied.
  optimizer = 8.0 if config.optimizer.name.startswith("adam") else 0.1
  return 4.0 * counts.total + (optimizer + 4.0) * counts.trained


def estimate_bytes(config, setting: Setting, chips: int,
                   counts: Counts | None = None) -> tuple[float, float]:
  """(state bytes, activation bytes) per chip, analytic: what each layer keeps for the
  backward in bf16 under the remat policy, for one microbatch's share of the batch.

  Args:
    counts: `parameter_counts(config)`, when the caller has it.
  """
  counts = counts or parameter_counts(config)
  cfg = setting.apply(config).model_config()
  t = setting.tensor
  rows = config.batch_size / setting.microbatches / (chips / t)
  li, lt = config.data.inputs_length, config.data.targets_length
  d, f, h = cfg.d_model, cfg.d_ff * (2 if cfg.gated_mlp else 1), cfg.num_heads
  nh = h * cfg.d_kv
  q_enc = setting.attention_query_block or li
  q_dec = min(setting.attention_query_block or lt, lt)

  def layer(tokens, width_d, width_sharded, scores, scores_blocked):
    keep = {"none": tokens * (width_d * d + width_sharded / t) * 2 + scores * 6,
            "minimal": tokens * ((width_d - 3) * d + width_sharded / t) * 2 + scores * 4,
            "full": tokens * d * 4}[cfg.remat_policy]
    if setting.attention_query_block and cfg.remat_policy != "full":
      keep -= (scores - scores_blocked) * (6 if cfg.remat_policy == "none" else 4)
    return keep

  enc_scores = rows * h / t * li * li
  dec_scores = rows * h / t * (lt * lt + lt * li)
  enc = layer(rows * li, 6, 3 * nh + 2 * f, enc_scores, enc_scores * q_enc / li)
  dec = layer(rows * lt, 9, 6 * nh + 2 * f, dec_scores, dec_scores * q_dec / lt)
  kept = cfg.num_encoder_layers * enc + cfg.num_decoder_layers * dec
  if cfg.remat_policy == "full":  # one layer's activations live while it is recomputed
    kept += max(rows * li * (6 * d + (3 * nh + 2 * f) / t) * 2 + enc_scores * 6,
                rows * lt * (9 * d + (6 * nh + 2 * f) / t) * 2 + dec_scores * 6)
  state = _state_bytes(config, counts)
  return state / (1 if setting.replicated else chips), kept


def estimate_seconds(config, setting: Setting, chip: topology.Chip, chips: int,
                     counts: Counts | None = None) -> float:
  """Step time at the chip's bf16 peak, the remat's recomputation and the collectives: the
  FSDP gathers and gradient scatters (once per microbatch), tensor parallelism's
  activation all-reduces (per layer). A frozen parameter costs no weight gradient: the
  backward of a run that trains a fraction p of them is (1 + p) forwards, not 2."""
  counts = counts or parameter_counts(config)
  cfg = setting.apply(config).model_config()
  li, lt = config.data.inputs_length, config.data.targets_length
  flops = model_flops_per_step(cfg, config.batch_size, li, lt)["total"] / chips
  flops *= (2.0 + counts.trained / counts.total) / 3.0
  factor = REMAT_TIME[cfg.remat_policy] * (SCAN_TIME if cfg.scan_layers else 1.0)
  if setting.attention_query_block:
    factor *= QUERY_BLOCK_TIME
  compute = flops * factor / chip.bf16_flops
  fsdp = chips // setting.tensor
  params, trained = counts.total / setting.tensor, counts.trained / setting.tensor
  if setting.replicated:  # one all-reduce of the trained fp32 gradients a step
    gathers = trained * 4 * 2 * (chips - 1) / chips
  else:  # bf16 gathers forward and backward, an fp32 reduce-scatter, per microbatch
    gathers = setting.microbatches * (params * 2 * 2 + trained * 4) * (fsdp - 1) / fsdp
  tokens = config.batch_size * (li + lt) / fsdp
  t = setting.tensor
  reduces = (4 * (cfg.num_encoder_layers + cfg.num_decoder_layers) * tokens * cfg.d_model * 2
             * 2 * (t - 1) / t)
  layers = cfg.num_encoder_layers + cfg.num_decoder_layers
  passes = 3 * REMAT_TIME[cfg.remat_policy] * layers * setting.microbatches
  collectives = setting.microbatches * layers * (
      (0 if setting.replicated else 3) + (4 if t > 1 else 0))
  fixed = passes * LAYER_PASS_S + collectives * COLLECTIVE_LATENCY_S
  return compute + fixed + COLLECTIVES_HIDDEN * (gathers + reduces) / chip.ici_bandwidth


def cache_key(config, accelerator_type: str, slices: int) -> str:
  import jax  # pylint: disable=g-import-not-at-top
  import importlib.metadata as metadata  # pylint: disable=g-import-not-at-top
  try:
    libtpu = metadata.version("libtpu")
  except metadata.PackageNotFoundError:
    libtpu = "none"
  text = json.dumps([dataclasses.asdict(config), accelerator_type, slices, jax.__version__,
                     libtpu, REPORT_VERSION], sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:24]


def cache_dir() -> pathlib.Path:
  return pathlib.Path(os.environ.get("T5JAX_COMPILE_CACHE") or
                      pathlib.Path.home() / ".cache" / "t5jax" / "compile_reports")


def cached_compile(config, accelerator_type: str, slices: int) -> tuple[dict, bool]:
  """libtpu's report for `config` on the slice, from the cache if it was compiled before;
  (report, came from the cache)."""
  path = cache_dir() / f"{cache_key(config, accelerator_type, slices)}.json"
  if path.exists():
    report = json.loads(path.read_text())
    # Reports cached before they said whether XLA counted a loop once: the config knows.
    report.setdefault("counted_once", bool(report.get("scan_layers")) or config.microbatches > 1)
    return report, True
  report = _compile_isolated(config, accelerator_type, slices)
  if report.get("crashed"):  # not cached: a host out of memory may not crash next time
    return report, False
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix(".tmp")
  tmp.write_text(json.dumps(report))
  tmp.replace(path)
  return report, False


def _compile_in_child(config, accelerator_type: str, slices: int, results) -> None:
  from t5jax.train import aot  # pylint: disable=g-import-not-at-top
  try:
    results.put(("report", aot.compile_for_slice(config, accelerator_type, slices)))
  except Exception as e:  # noqa: BLE001 - handed to the parent, which raises it
    results.put(("error", f"{e}"))


def _compile_isolated(config, accelerator_type: str, slices: int) -> dict:
  """One compile in a child process: libtpu aborts the process on some internal errors
  (seen: a crash in its convolution emitter for one fine-tuning setting of T5 1.1 base), and
  a search must outlive one setting's crash. The child's memory goes back when it ends."""
  import multiprocessing  # pylint: disable=g-import-not-at-top
  import queue  # pylint: disable=g-import-not-at-top
  context = multiprocessing.get_context("spawn")
  results = context.Queue()
  child = context.Process(target=_compile_in_child,
                          args=(config, accelerator_type, slices, results), daemon=True)
  child.start()
  while True:
    try:
      kind, value = results.get(timeout=2.0)
      break
    except queue.Empty:
      if not child.is_alive():
        return {"crashed": True, "compiled": False, "fits": False, "headroom": float("nan"),
                "exit_code": child.exitcode, "peak_bytes_per_device": float("nan"),
                "compile_seconds": float("nan"), "counted_once": True}
  child.join()
  if kind == "error":
    raise ValueError(value)
  return value


@dataclasses.dataclass
class Trial:
  setting: Setting
  estimated_s: float
  estimated_bytes: float
  state_bytes: float       # estimate_bytes' two parts, computed once
  activation_bytes: float
  report: dict | None = None
  cached: bool = False
  verdict: str = ""


def search(config, accelerator_type: str, slices: int = 1, headroom: float = HEADROOM,
           max_compiles: int = 6, log=print) -> tuple[Trial | None, list[Trial]]:
  """The fastest estimated setting whose libtpu compile leaves `headroom` of HBM free;
  (winner or None, the trials compiled in order)."""
  tpu_slice = topology.slice_of(accelerator_type)
  chip, chips = tpu_slice.chip, tpu_slice.chips * slices
  budget = chip.hbm_bytes * (1.0 - headroom)
  pending = []
  counts = parameter_counts(config)
  for s in candidates(config, chips):
    state, act = estimate_bytes(config, s, chips, counts)
    pending.append(Trial(s, estimate_seconds(config, s, chip, chips, counts), state + act,
                         state, act))
  if not pending:
    raise ValueError(
        f"No setting of batch {config.batch_size} splits over {chips} chips; use a batch that "
        f"is a multiple of {chips}.")
  pending.sort(key=lambda tr: (tr.estimated_s, tr.estimated_bytes))
  # libtpu's activation bytes over the analytic ones, per remat policy and whether the
  # attention is blocked (the scores are what the analytic count misses most); a class not
  # yet compiled takes the smallest ratio seen, so that it is tried rather than ruled out.
  ratio: dict[tuple, float] = {}
  kind = lambda s: (s.remat_policy, bool(s.attention_query_block))
  state_actual = None
  tried: list[Trial] = []

  def calibrated(tr: Trial) -> float:
    r = ratio.get(kind(tr.setting), min(ratio.values(), default=1.0))
    state = tr.state_bytes if state_actual is None else state_actual
    return state + tr.activation_bytes * r

  def compile_next(trial: Trial) -> dict:
    pending.remove(trial)
    trial.estimated_bytes = calibrated(trial)
    trial.report, trial.cached = cached_compile(trial.setting.apply(config), accelerator_type,
                                                slices)
    tried.append(trial)
    return trial.report

  def whole_roofline(trial: Trial) -> None:
    """A microbatched step's roofline over all its microbatches (XLA counts the loop's body
    once): from its cost twin, the same step with the loop unrolled (compiled and cached)."""
    s = trial.setting
    if s.microbatches == 1 or s.scan_layers or not trial.report.get("compiled", True):
      return
    priced, twin_report, cached = price_microbatches(config, s, trial.report, chip,
                                                     accelerator_type, slices)
    log(f"  {s.label}: its {s.microbatches} microbatches unrolled "
        + ("cached" if cached else f"compiled in {twin_report['compile_seconds']} s")
        + " for the whole step's roofline")
    if priced:
      trial.report.update(priced)

  def faster(a: Trial, b: Trial) -> bool:
    """libtpu's roofline where both have a whole one (no loop counted once, traffic known),
    else the estimate."""
    known = lambda r: not r["counted_once"] and r.get("traffic_known", True)
    if known(a.report) and known(b.report):
      return a.report["roofline_step_s"] < b.report["roofline_step_s"]
    return a.estimated_s < b.estimated_s

  winner = None
  while pending and len(tried) < max_compiles and winner is None:
    fitting = [tr for tr in pending if calibrated(tr) <= budget]
    trial = fitting[0] if fitting else min(pending, key=calibrated)
    report = compile_next(trial)
    if report.get("crashed"):
      trial.verdict = _miss(report, headroom)
      log(_trial_line(trial))
      continue
    if report["fits"] and report["headroom"] >= headroom:
      winner = trial
      trial.verdict = "fits"
      log(_trial_line(trial))
      whole_roofline(trial)
      break
    trial.verdict = _miss(report, headroom)
    log(_trial_line(trial))
    state_actual = report["argument_size_in_bytes"]
    measured_act = max(report["peak_bytes_per_device"] - state_actual, 0.0)
    ratio[kind(trial.setting)] = measured_act / max(trial.activation_bytes, 1.0)
  if winner is None:
    return None, tried
  # The estimate orders the search; among settings it rates within CLOSE of the one that
  # fit, libtpu's own roofline (its FLOPs and HBM traffic) picks.
  close = [tr for tr in pending if tr.estimated_s <= winner.estimated_s * (1 + CLOSE)
           and calibrated(tr) <= budget]
  for trial in close[:max(0, max_compiles - len(tried))]:
    report = compile_next(trial)
    if report.get("crashed"):
      trial.verdict = _miss(report, headroom)
      log(_trial_line(trial))
      continue
    fits = report["fits"] and report["headroom"] >= headroom
    if fits:
      whole_roofline(trial)
    if fits and faster(trial, winner):
      winner.verdict, winner = "fits; slower", trial
      trial.verdict = "fits"
    else:
      trial.verdict = "fits; slower" if fits else _miss(report, headroom)
    log(_trial_line(trial))
  winner.verdict = "fastest that fits"
  return winner, tried


def cost_twin(config, setting: Setting):
  """`setting` applied to `config` with its microbatch loop unrolled: the same step as
  straight-line code, whose cost analysis counts every microbatch and the one update."""
  return dataclasses.replace(setting.apply(config), unroll_microbatches=True)


def price_microbatches(config, setting: Setting, report: dict, chip: topology.Chip,
                       accelerator_type: str, slices: int) -> tuple[dict | None, dict, bool]:
  """Compiles (or reads from the cache) the cost twin of `setting`'s step (`report`, its
  microbatch loop counted once); (the step's roofline fields from the twin, or None when
  the twin has no cost analysis: libtpu refused it or died; the twin's report; cached)."""
  twin, cached = cached_compile(cost_twin(config, setting), accelerator_type, slices)
  if not twin.get("compiled", True) or twin.get("crashed"):
    return None, twin, cached
  return microbatch_roofline(report, twin, chip), twin, cached


def microbatch_roofline(report: dict, twin: dict, chip: topology.Chip) -> dict:
  """The roofline of a microbatched step (`report`, its loop counted once) from its cost
  twin's FLOPs and HBM traffic (`twin`: the loop unrolled); the memory stays the step's."""
  from t5jax.train import aot  # pylint: disable=g-import-not-at-top
  whole = {**report, "xla_flops_per_device": twin["xla_flops_per_device"],
           "xla_bytes_accessed_per_device": twin["xla_bytes_accessed_per_device"]}
  roofline = aot.fit_and_roofline(whole, chip)
  return {**{k: v for k, v in roofline.items() if k.startswith("roofline_")
             or k in ("bound", "traffic_known")},
          "xla_flops_per_device": whole["xla_flops_per_device"],
          "xla_bytes_accessed_per_device": whole["xla_bytes_accessed_per_device"],
          "counted_once": False, "roofline_from": "its microbatch loop unrolled"}


def _miss(report: dict, headroom: float) -> str:
  """Why a compiled setting cannot be the answer."""
  if report.get("crashed"):
    if report["exit_code"] == -9:  # SIGKILL: on a compile host, the kernel's OOM killer
      return "compiler killed (SIGKILL: out of host memory?)"
    return f"compiler crashed (exit {report['exit_code']})"
  if not report["fits"]:
    return "over HBM"
  return f"{report['headroom']:.0%} headroom, under {headroom:.0%}"


def _trial_line(tr: Trial) -> str:
  r = tr.report
  how = "cached" if tr.cached else f"compiled in {r['compile_seconds']} s"
  return (f"  {tr.setting.label}: estimated {tr.estimated_s * 1e3:.1f} ms, "
          f"{tr.estimated_bytes / 2**30:.2f} GiB; libtpu {r['peak_bytes_per_device'] / 2**30:.2f}"
          f" GiB ({how}): {tr.verdict}")


def format_table(winner: Trial | None, tried: list[Trial], config, headroom: float) -> str:
  gib = 2**30
  lines = ["| setting | estimated ms | estimated GiB | libtpu peak GiB | headroom | "
           "roofline ms | compile s | verdict |", "|---|---|---|---|---|---|---|---|"]
  for tr in tried:
    r = tr.report
    roofline = ("-" if r["counted_once"] or not r.get("compiled", True)
                else f"{r['roofline_step_s'] * 1e3:.1f}")
    lines.append(
        f"| {tr.setting.label} | {tr.estimated_s * 1e3:.1f} | {tr.estimated_bytes / gib:.2f} | "
        f"{r['peak_bytes_per_device'] / gib:.2f} | {r['headroom']:.0%} | {roofline} | "
        f"{'cached' if tr.cached else r['compile_seconds']} | {tr.verdict} |")
  if winner is None:
    lines.append(f"No setting tried fits with {headroom:.0%} headroom: use a larger slice, "
                 "or raise --fit_compiles to try more.")
  else:
    lines.append(f"Fastest setting that fits with at least {headroom:.0%} headroom "
                 f"({winner.setting.label}); add to your command:")
    lines.append("  " + " ".join(winner.setting.gin_bindings(config)))
  return "\n".join(lines)


def recipe(winner: Trial, config, accelerator_type: str, slices: int,
           gin_files: list[str], extra: list[str] = ()) -> str:
  """A gin file of the run with the winning setting: it includes `gin_files`, repeats the
  command's `extra` bindings and binds the setting, so `--gin_file=RECIPE` alone names the
  step that was compiled; libtpu's figures are in its header."""
  from t5jax import config as gin_config  # pylint: disable=g-import-not-at-top
  r, gib = winner.report, 2**30
  where = accelerator_type + (f" x {slices} slices" if slices > 1 else "")
  if r["counted_once"]:  # XLA counted a loop's body once (scanned layers): no roofline
    roofline = ""
  else:  # a microbatched step's from its cost twin (its loop unrolled)
    source = f" ({r['roofline_from']})" if r.get("roofline_from") else ""
    roofline = (f"; roofline {r['roofline_step_s'] * 1e3:.1f} ms a step{source}, MFU at most "
                f"{r['roofline_mfu']:.0%}")
  lines = [f"# {config.model} on {where}, as `t5jax compile --fit` chose with libtpu's compiler:",
           f"# peak {r['peak_bytes_per_device'] / gib:.2f} GiB of "
           f"{r['hbm_bytes_per_chip'] / gib:.0f} GiB HBM a chip ({r['headroom']:.0%} free)"
           f"{roofline}."]
  for name in gin_files:  # a shipped name stays a name; a path of the user's, absolute
    explicit = gin_config.explicit_path(name)
    lines.append(f"include '{os.path.abspath(os.path.expanduser(name)) if explicit else name}'")
  setting = winner.setting.bindings(config)
  bound = {b.split(" = ", 1)[0] for b in setting}
  extra = [" = ".join(part.strip() for part in b.split("=", 1)) for b in extra]  # `X=Y`, `X = Y`
  lines += [b for b in extra if b.split(" = ", 1)[0] not in bound] + setting
  return "\n".join(lines) + "\n"


def summary(winner: Trial | None, tried: list[Trial], config) -> dict:
  row = lambda tr: {"setting": dataclasses.asdict(tr.setting), "estimated_s": tr.estimated_s,
                    "estimated_bytes": tr.estimated_bytes, "cached": tr.cached,
                    "verdict": tr.verdict, "report": tr.report}
  return {"fit": row(winner) if winner else None,
          "gin_bindings": winner.setting.gin_bindings(config) if winner else [],
          "tried": [row(tr) for tr in tried]}

