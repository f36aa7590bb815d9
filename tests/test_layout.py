"""The package by stage: imports run one way (cli/ > train/ > decode/, interop/ > the
ground), no two modules import each other (through any circle), and every module, name and
path that the README and docs name exists."""

import ast
import importlib
import pathlib
import re
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / "t5jax"
# fs (a run's files, local or gs://) is below the ground: anything may import it. store (the
# example store) is ground that data/ stands on: what may import data/ may import store/.
GROUND = {"model", "data", "parallel", "store", "fs"}

# What each top-level unit of t5jax may import besides itself (t5jax/__init__.py says why).
ALLOWED = {
    "cli": {"train", "decode", "interop", "checkpoint", "config", *GROUND},
    "train": {"decode", "checkpoint", "config", *GROUND},
    "decode": {"checkpoint", *GROUND},
    "interop": {"checkpoint", *GROUND},
    "checkpoint": set(GROUND),
    "config": {"fs"},
    "model": {"fs"},
    "data": {"store", "fs"},
    "parallel": {"fs"},
    "store": {"fs"},
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


def _module_names(package: pathlib.Path) -> dict[str, pathlib.Path]:
  """{dotted module name: its file} of every module in `package` (a package is its
  __init__)."""
  names = {}
  for path in package.rglob("*.py"):
    parts = path.relative_to(package.parent).with_suffix("").parts
    names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
  return names


def import_graph(package: pathlib.Path = PACKAGE) -> dict[str, set[str]]:
  """{module: the package's modules it imports}, nested (function-level) imports too; an
  imported name that is not a module counts as its module (`from t5jax.data.x import f`: x)."""
  modules = _module_names(package)
  graph = {}
  for name, path in modules.items():
    graph[name] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
      if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        targets = [f"{node.module}.{alias.name}" for alias in node.names]
      else:
        continue
      for target in targets:
        while target and target not in modules:
          target = target.rpartition(".")[0]
        if target and target != name:
          graph[name].add(target)
  return graph


def import_circles(package: pathlib.Path = PACKAGE) -> list[str]:
  """One line per group of modules that import each other, directly or round a circle:
  'a -> b -> a', a circle through the group's first module (Tarjan's strongly connected
  components)."""
  graph = import_graph(package)
  index, low, stack, components = {}, {}, [], []

  def visit(v):  # As deep as the longest chain of imports: a few dozen.
    index[v] = low[v] = len(index)
    stack.append(v)
    for w in sorted(graph[v]):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = set(stack[stack.index(v):])
      del stack[stack.index(v):]
      if len(component) > 1:
        components.append(component)

  for v in sorted(graph):
    if v not in index:
      visit(v)
  circles = []
  for component in components:
    path = [min(component)]
    while path.count(path[-1]) < 2:  # Walk inside the group until a module repeats.
      path.append(min(w for w in graph[path[-1]] if w in component))
    circles.append(" -> ".join(path[path.index(path[-1]):]))
  return sorted(circles)


def test_no_two_modules_import_each_other():
  assert import_circles() == []


def test_an_import_circle_is_named(tmp_path):
  """The check itself: a circle closed by a function-level import, through three modules, is
  named; a package that imports its own modules is no circle."""
  package = tmp_path / "t5jax"
  (package / "data").mkdir(parents=True)
  (package / "data" / "__init__.py").write_text("from t5jax.data.a import f\n")
  (package / "data" / "a.py").write_text("from t5jax.data import b\n\ndef f():\n  return b\n")
  (package / "data" / "b.py").write_text("import t5jax.data.c\n")
  (package / "data" / "c.py").write_text(
      "def g():\n  from t5jax.data.a import f  # hidden in a function\n  return f\n")
  (package / "data" / "d.py").write_text("from t5jax.data import a, b\n")
  assert import_circles(package) == [
      "t5jax.data.a -> t5jax.data.b -> t5jax.data.c -> t5jax.data.a"]
  (package / "data" / "c.py").write_text("import os\n")
  assert import_circles(package) == []


def test_the_store_loads_no_seqio_or_tensorflow():
  """store/ is below data/: a process that reads stores (the pipeline's workers) stays light."""
  loaded = subprocess.run(
      [sys.executable, "-c", "import sys, t5jax.store; print(sorted(m for m in sys.modules if "
       "m.split('.')[0] in ('seqio', 'tensorflow', 'tensorflow_datasets', 'apache_beam')))"],
      capture_output=True, text=True, check=True, cwd=REPO).stdout.strip()
  assert loaded == "[]"


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
