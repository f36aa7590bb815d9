"""The package by stage: imports run one way (cli/ > train/ > decode/, interop/ > the
ground), and every module, name and path that the README and docs name exists."""

import ast
import importlib
import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / "t5jax"
# fs (a run's files, local or gs://) is below the ground: anything may import it.
GROUND = {"model", "data", "parallel", "fs"}

# What each top-level unit of t5jax may import besides itself (t5jax/__init__.py says why).
ALLOWED = {
    "cli": {"train", "decode", "interop", "checkpoint", "config", *GROUND},
    "train": {"decode", "checkpoint", "config", *GROUND},
    "decode": {"checkpoint", *GROUND},
    "interop": {"checkpoint", *GROUND},
    "checkpoint": set(GROUND),
    "config": {"fs"},
    "model": {"fs"},
    "data": {"fs"},
    "parallel": {"fs"},
    "fs": set(),
    "__init__": set(),
    "__main__": {"cli"},
}


def _unit(path: pathlib.Path, package: pathlib.Path = PACKAGE) -> str:
  return path.relative_to(package).parts[0].removesuffix(".py")


def _imported_units(tree: ast.AST):
  """(line, import text, t5jax unit) for every t5jax import in a module, nested ones too."""
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      modules = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      modules = ([f"t5jax.{alias.name}" for alias in node.names] if node.module == "t5jax"
                 else [node.module])
    else:
      continue
    for module in modules:
      parts = module.split(".")
      if parts[0] == "t5jax" and len(parts) > 1:
        yield node.lineno, ast.unparse(node), parts[1]


def import_violations(package: pathlib.Path = PACKAGE) -> list[str]:
  """One line per import that runs against the stages: 'file:line: import (unit -> unit)'."""
  bad = []
  for path in sorted(package.rglob("*.py")):
    unit = _unit(path, package)
    for line, text, target in _imported_units(ast.parse(path.read_text(encoding="utf-8"))):
      if target != unit and target not in ALLOWED[unit]:
        bad.append(f"{path.relative_to(package.parent)}:{line}: {text} ({unit}/ may not import "
                   f"{target}/)")
  return bad


def test_imports_run_one_way():
  assert import_violations() == []


def test_every_package_unit_has_a_rule():
  units = {_unit(p) for p in PACKAGE.rglob("*.py")}
  assert units <= set(ALLOWED), f"add a rule for {sorted(units - set(ALLOWED))}"


def test_an_upward_import_is_named(tmp_path):
  """The check itself: decode/ importing train/ is reported with its file and line."""
  package = tmp_path / "t5jax"
  (package / "decode").mkdir(parents=True)
  (package / "decode" / "bad.py").write_text(
      "import os\n\ndef f():\n  from t5jax.train import step\n  return step\n")
  (package / "decode" / "good.py").write_text("from t5jax.model import t5\n")
  assert import_violations(package) == [
      "t5jax/decode/bad.py:4: from t5jax.train import step (decode/ may not import train/)"]


def test_each_folder_says_what_it_may_import():
  for init in PACKAGE.glob("*/__init__.py"):
    doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
    assert doc and "import" in doc, f"{init.relative_to(REPO)} needs a docstring with its rule"


DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]  # docs/performance/ too
DOTTED = re.compile(r"\bt5jax(?:\.[A-Za-z_][A-Za-z0-9_]*)+")
FROM_IMPORT = re.compile(r"from (t5jax(?:\.\w+)*) import ([\w, ]+)")
PATH = re.compile(r"\bt5jax/[\w/]+\.py\b")


def _resolve(dotted: str) -> None:
  """Imports the longest module prefix of `dotted`, then reads the rest as attributes."""
  parts = dotted.split(".")
  for cut in range(len(parts), 0, -1):
    try:
      obj = importlib.import_module(".".join(parts[:cut]))
    except ModuleNotFoundError:
      continue
    for name in parts[cut:]:
      obj = getattr(obj, name)
    return
  raise ModuleNotFoundError(dotted)


def _named_in_docs():
  names, paths = set(), set()
  for doc in DOCS:
    text = doc.read_text(encoding="utf-8")
    names.update(m.rstrip(".") for m in DOTTED.findall(text))
    for module, imported in FROM_IMPORT.findall(text):
      names.update(f"{module}.{n.strip()}" for n in imported.split(",") if n.strip())
    paths.update(PATH.findall(text))
  return sorted(names), sorted(paths)


@pytest.mark.parametrize("dotted", _named_in_docs()[0])
def test_names_in_docs_import(dotted):
  _resolve(dotted)


def test_paths_in_docs_exist():
  missing = [p for p in _named_in_docs()[1] if not (REPO / p).is_file()]
  assert not missing, f"README/docs name files that do not exist: {missing}"
