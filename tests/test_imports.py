"""Import hygiene: the package's module-level import graph has no cycle, imports sit at module level
except a short list that keeps a heavy or optional dependency lazy (or is a documented late lookup),
and the genome layer and `star-jax --help` load without JAX or Flax."""
from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "star_jax"


def _module_files() -> dict[str, pathlib.Path]:
    """Dotted module name -> file, packages named by their `__init__.py`."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _module_files()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _absolute(module: str, node: ast.ImportFrom) -> str:
    """The absolute module a `from ... import` statement in `module` names."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if _is_package(module) else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imported(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The modules an import statement in `module` names, absolute: a star_jax package resolves to
    its `__init__`, `from pkg import sub` to the submodule when `sub` is one, `import a.b.c` of a
    star_jax module to that module; other modules as written."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        source = _absolute(module, node)
        names = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in MODULES else source
                 for alias in node.names]
    out = []
    for name in names:
        if name == "star_jax" or name.startswith("star_jax."):
            while name not in MODULES:  # `from star_jax.x import y`: y is an attribute of star_jax.x
                name = name.rpartition(".")[0]
        if name not in out:
            out.append(name)
    return out


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The star_jax modules an import statement executes."""
    return [name for name in _imported(module, node) if name in MODULES]


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Yields (import node, inside a function?) for every import that runs, skipping
    `if TYPE_CHECKING:` blocks."""
    def walk(node, in_function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, in_function
            elif isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    yield from walk(ast.Module(body=[other], type_ignores=[]), in_function)
            else:
                nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                yield from walk(child, nested)
    yield from walk(tree, False)


def _parsed() -> dict[str, ast.Module]:
    return {name: ast.parse(path.read_text(), filename=str(path)) for name, path in MODULES.items()}


def import_graph() -> dict[str, list[str]]:
    """Module -> the star_jax modules its module-level imports execute."""
    graph = {}
    for name, tree in _parsed().items():
        edges = []
        for node, in_function in _imports(tree):
            if not in_function:
                edges += [t for t in _targets(name, node) if t != name and t not in edges]
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def in_function_imports() -> list[tuple[str, str, int]]:
    """(module, imported module, line) for every import inside a function body."""
    out = []
    for name, tree in _parsed().items():
        for node, in_function in _imports(tree):
            if in_function:
                out += [(name, target, node.lineno) for target in _imported(name, node)]
    return out


HEAVY = ("jax", "flax", "optax", "chex", "orbax")

# (module, imported module or package) -> why that import is inside a function. Every other import
# is at module level. Keep this short: an entry needs a heavy or optional dependency to keep lazy,
# or a lookup that must happen at call time.
LAZY_IMPORTS = {
    ("star_jax.cli", "star_jax"): "`star-jax --help` loads no JAX: a subcommand imports its JAX-backed modules",
    ("star_jax.evolve.reevaluate", "star_jax.evolve.loop"):
        "looks up loop.train_candidates when called (tests replace it); loop imports reevaluate",
    ("star_jax.evolve.report", "matplotlib"): "matplotlib loads only to draw plots",
    ("star_jax.evolve.reevaluate", "matplotlib"): "matplotlib loads only to draw plots",
    ("star_jax.evolve.report", "rich"): "rich loads only to print to a terminal",
    ("star_jax.evolve.display", "rich"): "rich loads only to print to a terminal",
    ("star_jax.train.progress", "rich"): "rich loads only to print to a terminal",
    ("star_jax.io.logs", "tensorboardX"): "tensorboardX loads only when TensorBoard logging is on",
    ("star_jax.io.rundir", "fcntl"): "POSIX-only standard module: only RunDir.lock needs it",
    ("star_jax.xla_flags", "jax"): "`import star_jax` loads no JAX: asks JAX's backends only when JAX is loaded",
}


def _allowed(module: str, target: str) -> str | None:
    """The LAZY_IMPORTS key that allows `module` to import `target` inside a function, or None."""
    for key in LAZY_IMPORTS:
        if key[0] == module and (target == key[1] or target.startswith(key[1] + ".")):
            return key
    return None


def loads_heavy(graph: dict[str, list[str]]) -> dict[str, set[str]]:
    """Module -> the heavy dependencies importing it loads (through its module-level imports, its
    parent packages' and theirs)."""
    direct = {}
    for name, tree in _parsed().items():
        direct[name] = {target.split(".")[0] for node, in_function in _imports(tree) if not in_function
                        for target in _imported(name, node)} & set(HEAVY)
    memo: dict[str, set[str]] = {}

    def heavy(name, seen=()):
        if name in memo:
            return memo[name]
        out = set(direct[name])
        parents = [name.rpartition(".")[0]] if "." in name else []
        for other in graph[name] + parents:
            if other not in seen:
                out |= heavy(other, (*seen, name))
        if not seen:
            memo[name] = out
        return out

    return {name: heavy(name) for name in graph}


def test_module_level_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 40 and graph["star_jax"] == ["star_jax.xla_flags", "star_jax.genome", "star_jax.genome.baselines"], graph["star_jax"]
    assert "star_jax.genome.baselines" in graph["star_jax.genome"]  # `from . import baselines`
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle among star_jax modules: " + " -> ".join(cycle)


def test_find_cycle_names_the_modules():
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"], "d": []}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b"], "b": [], "c": ["a", "b"]}) is None


def test_in_function_imports_are_the_allowlisted_lazy_ones():
    found = in_function_imports()
    unlisted = [f"{MODULES[m].relative_to(ROOT)}:{line} imports {t}" for m, t, line in found if not _allowed(m, t)]
    assert not unlisted, ("imports inside functions that are not a listed lazy import; move them to "
                          "module level, or add a reason to LAZY_IMPORTS:\n  " + "\n  ".join(unlisted))
    stale = sorted(set(LAZY_IMPORTS) - {_allowed(m, t) for m, t, _ in found})
    assert not stale, f"LAZY_IMPORTS entries no longer used, remove them: {stale}"
    # the command line defers only modules that load JAX (or Flax, orbax ...); a light one belongs at the top
    heavy = loads_heavy(import_graph())
    assert not heavy["star_jax.cli"] and not heavy["star_jax.genome"], heavy["star_jax.cli"]
    light = sorted({t for m, t, _ in found if m == "star_jax.cli" and not heavy[t]})
    assert not light, f"star_jax.cli imports these inside functions, but they load no JAX: {light}"


def test_genome_and_help_load_no_jax():
    """A fresh process: `import star_jax.genome`, `star_jax.Genome`, `star_jax.baselines` and
    `star-jax --help` (also a subcommand's) leave JAX and Flax unloaded (tests/test_genome.py
    checks the rest of the JAX-free top-level API)."""
    code = ("import sys, contextlib, io\n"
            "import star_jax.genome\n"
            "import star_jax as sj\n"
            "sj.Genome.from_string('1.1.1.1.1-9.1.1.1.1'); sj.baselines.transformer_pp()\n"
            "from star_jax.cli import main\n"
            "for argv in (['--help'], ['describe', '--help'], ['no-such-command']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
            "        try:\n"
            "            main(argv)\n"
            "        except SystemExit:\n"
            "            pass\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "[]", f"loaded without need: {res.stdout.strip()}"
