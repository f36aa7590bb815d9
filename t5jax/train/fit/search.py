"""`t5jax compile --topology TYPE --fit`: the fastest setting that fits a TPU slice.

The settings that trade memory for time: the remat policy, scanned layers, the attention's
query block, microbatches (gradient accumulation) and the FSDP/tensor split of a slice. A
libtpu compile of a full-depth model takes minutes on a small host, so the search is not a
grid. Every candidate gets an analytic step time (`cost.estimate_seconds`) and peak memory
per chip (`cost.estimate_bytes`); candidates are tried fastest first, and only those whose memory
estimate fits are compiled. Each compile calibrates the estimate (libtpu's temporaries over
the analytic ones, per remat policy), so a misjudged first guess corrects the rest. The first
candidate that compiles with at least `headroom` of the chip's HBM free is the first answer;
the settings estimated within `CLOSE` of it are compiled too, and libtpu's roofline (its own
FLOPs and HBM traffic) picks among those that fit. Every candidate not compiled is
estimated slower, or over the HBM. Compile reports are cached on disk by the
full configuration (`reports`), so a second search, or a recipe benchmark, compiles nothing
twice.
"""

from __future__ import annotations

import dataclasses

from t5jax.train.fit import cost, pricing, reports, writers
from t5jax.parallel import topology

HEADROOM = 0.10
CLOSE = 0.05  # settings estimated within 5% of the first that fits are compiled too


@dataclasses.dataclass
class Trial:
  setting: cost.Setting
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
  counts = cost.parameter_counts(config)
  for s in cost.candidates(config, chips):
    state, act = cost.estimate_bytes(config, s, chips, counts)
    pending.append(Trial(s, cost.estimate_seconds(config, s, chip, chips, counts), state + act,
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
    trial.report, trial.cached = reports.cached_compile(trial.setting.apply(config),
                                                        accelerator_type, slices)
    tried.append(trial)
    return trial.report

  def whole_roofline(trial: Trial) -> None:
    """A microbatched step's roofline over all its microbatches (XLA counts the loop's body
    once): from its cost twin, the same step with the loop unrolled (compiled and cached)."""
    s = trial.setting
    if s.microbatches == 1 or s.scan_layers or not trial.report.get("compiled", True):
      return
    priced, twin_report, cached = pricing.price_microbatches(config, s, trial.report, chip,
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
      trial.verdict = writers.miss(report, headroom)
      log(writers.trial_line(trial))
      continue
    if report["fits"] and report["headroom"] >= headroom:
      winner = trial
      trial.verdict = "fits"
      log(writers.trial_line(trial))
      whole_roofline(trial)
      break
    trial.verdict = writers.miss(report, headroom)
    log(writers.trial_line(trial))
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
      trial.verdict = writers.miss(report, headroom)
      log(writers.trial_line(trial))
      continue
    fits = report["fits"] and report["headroom"] >= headroom
    if fits:
      whole_roofline(trial)
    if fits and faster(trial, winner):
      winner.verdict, winner = "fits; slower", trial
      trial.verdict = "fits"
    else:
      trial.verdict = "fits; slower" if fits else writers.miss(report, headroom)
    log(writers.trial_line(trial))
  winner.verdict = "fastest that fits"
  return winner, tried
