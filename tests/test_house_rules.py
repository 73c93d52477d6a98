"""House rules read from the source: no import circle between amr_jax's modules, benchmarks/ and
experiments/ depending one way only, and no function in amr_jax/ over MAX_FUNCTION_LINES.
Imports are every import statement, including those inside functions, so an import deferred to
break a circle still counts."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("amr_jax", "benchmarks", "experiments")
MAX_FUNCTION_LINES = 80  # docstring and comments included: a function a reader sees whole


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: str = "") -> dict[str, set[str]]:
  """``{module: modules of PACKAGES it imports}``, over the files under ``package`` (all
  PACKAGES if empty). ``from a import b`` counts as importing ``a.b`` when that is a module."""
  files = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")
           if "results" not in p.parts}
  graph = {}
  for name, path in files.items():
    if package and not (name == package or name.startswith(package + ".")):
      continue
    is_package = path.name == "__init__.py"
    edges = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: resolved against this module's package
          anchor = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
          base = ".".join(anchor + ([base] if base else []))
        targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base
                   for alias in node.names]
      else:
        continue
      edges.update(t for t in targets if t.split(".")[0] in PACKAGES and t != name)
    graph[name] = edges
  return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components with more than one module (Tarjan's algorithm)."""
  index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    for w in graph.get(v, ()):
      if w not in graph:
        continue
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def _without_package_inits(graph: dict[str, set[str]]) -> dict[str, set[str]]:
  # A package's __init__ that re-exports its submodules is not an arrow back up from them:
  # importing ``amr_jax.data.batching`` from ``amr_jax.data.datasets`` passes through it.
  packages = {n for n in graph if any(m.startswith(n + ".") for m in graph)}
  return {n: {t for t in e if t not in packages} for n, e in graph.items()}


def test_amr_jax_has_no_import_circle():
  found = cycles(_without_package_inits(import_graph("amr_jax")))
  assert not found, f"import circles in amr_jax: {found}"


def test_the_cycle_finder_finds_a_circle():
  # Negative control: a circle of three, and one through a deferred import.
  assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
  assert cycles({"a": {"b"}, "b": set()}) == []


def test_benchmarks_and_experiments_depend_one_way():
  graph = import_graph()
  arrows = {(a.split(".")[0], b.split(".")[0]) for a, edges in graph.items() for b in edges}
  both = ("benchmarks", "experiments") in arrows and ("experiments", "benchmarks") in arrows
  detail = sorted((a, b) for a, edges in graph.items() for b in edges
                  if {a.split(".")[0], b.split(".")[0]} == {"benchmarks", "experiments"})
  assert not both, f"benchmarks and experiments import each other: {detail}"


def long_functions(package: str = "amr_jax", limit: int = MAX_FUNCTION_LINES
                   ) -> list[tuple[int, str]]:
  """(lines, 'path:line name') of every function or method under ``package`` over ``limit``."""
  out = []
  for path in sorted((ROOT / package).rglob("*.py")):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        lines = node.end_lineno - node.lineno + 1
        if lines > limit:
          out.append((lines, f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"))
  return sorted(out, reverse=True)


def test_no_function_over_the_limit():
  assert not long_functions(), f"functions over {MAX_FUNCTION_LINES} lines: {long_functions()}"
  # Negative control: the measure sees functions at all (the longest is near the limit).
  assert long_functions(limit=40)
