"""How a benchmark reports: its result as one JSON line on stdout, appended to a file
when asked (benchmarks/results/*.jsonl collect them)."""

from __future__ import annotations

import json


def emit_json(result: dict, json_out: str | None) -> None:
  """Prints `result` as one JSON line and appends it to `json_out` if given."""
  line = json.dumps(result)
  print(line)
  if json_out:
    with open(json_out, "a") as f:
      f.write(line + "\n")
