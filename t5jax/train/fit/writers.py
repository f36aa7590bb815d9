"""What a search prints and writes: a line per compiled trial, the table of them, the gin
recipe of the winner (`--fit_recipe`) and the JSON summary."""

from __future__ import annotations

import dataclasses
import os


def miss(report: dict, headroom: float) -> str:
  """Why a compiled setting cannot be the answer."""
  if report.get("crashed"):
    if report["exit_code"] == -9:  # SIGKILL: on a compile host, the kernel's OOM killer
      return "compiler killed (SIGKILL: out of host memory?)"
    return f"compiler crashed (exit {report['exit_code']})"
  if not report["fits"]:
    return "over HBM"
  return f"{report['headroom']:.0%} headroom, under {headroom:.0%}"


def trial_line(tr) -> str:
  r = tr.report
  how = "cached" if tr.cached else f"compiled in {r['compile_seconds']} s"
  return (f"  {tr.setting.label}: estimated {tr.estimated_s * 1e3:.1f} ms, "
          f"{tr.estimated_bytes / 2**30:.2f} GiB; libtpu {r['peak_bytes_per_device'] / 2**30:.2f}"
          f" GiB ({how}): {tr.verdict}")


def format_table(winner, tried: list, config, headroom: float) -> str:
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


def recipe(winner, config, accelerator_type: str, slices: int,
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


def summary(winner, tried: list, config) -> dict:
  row = lambda tr: {"setting": dataclasses.asdict(tr.setting), "estimated_s": tr.estimated_s,
                    "estimated_bytes": tr.estimated_bytes, "cached": tr.cached,
                    "verdict": tr.verdict, "report": tr.report}
  return {"fit": row(winner) if winner else None,
          "gin_bindings": winner.setting.gin_bindings(config) if winner else [],
          "tried": [row(tr) for tr in tried]}
