"""The import contract of `vlv`: its modules form layers that import only downwards, and no modules import each
other in a circle. Every import counts, also those inside functions (which hide circles from Python).

Imports sit at module level, where a reader sees what a module depends on. An import of a module of `vlv` may wait
inside a function only when that module loads a heavy library (`HEAVY_LIBRARIES`) that the importing module does not
load already (the torch-free config layer and the commands must start without torch, MLflow or Ray), or when a
comment on the import says why it must wait.

`LAYERS` is the one table of the layers, lowest first. A module may import from its own layer and the layers below;
within a layer any import is allowed as long as it closes no circle. A new module needs a row here (a test fails
until it has one). CONTRIBUTING.md says where a new step, model or metric goes.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# (layer, the modules and packages in it, what it holds), lowest first.
LAYERS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("core", ("vlv", "vlv.config_tree", "vlv.paths", "vlv.ports", "vlv.secrets", "vlv.logs", "vlv.job_env",
              "vlv.progress"),
     "the config tree, paths and URIs, ports, secrets, logging, the job environment, progress lines"),
    ("engine", ("vlv.engine", "vlv.tracking", "vlv.runtime_env", "vlv.store_inventory"),
     "steps as declarations, plans and keys, the run store, the Ray executor, MLflow bookkeeping"),
    ("models", ("vlv.models",), "the model classes, their configs and the trained-model folder format"),
    ("data", ("vlv.data",), "LAION metadata, downloads, caption formats and requests, the tiny photo site"),
    ("train", ("vlv.train",), "the DeepSpeed loop on Ray Train, the training data streams, the stage tasks"),
    ("eval", ("vlv.eval",), "FID, VQA, the caption arena, evaluation sets"),
    ("steps", ("vlv.steps",), "the pipeline's steps: each one's config section and Step class"),
    ("assets", ("vlv.paper_mini",), "the paper_mini preset's miniature models and data, built from the layers below"),
    ("application", ("vlv.pipeline_config", "vlv.presets", "vlv.config", "vlv.pipeline", "vlv.run",
                     "vlv.cli_flags", "vlv.cli", "vlv.sweep",
                     "vlv.cost_plan", "vlv.batch_requests", "vlv.inference", "vlv.serving",
                     "vlv.captioner_model_code"),
     "the root config, presets and config loading, the runner, the commands, captioning and serving"),
    ("testing", ("vlv.testing",), "support for tests and benchmarks: builders, toy steps, fault injection"),
)

# Third-party libraries worth importing late, with what importing one costs: `python -X importtime -c 'import X'`
# (cumulative, best of three) and the growth of the process's peak memory, measured 2026-12-01 on this 2-core
# machine while other jobs ran (load 5), so read the times for their order. Lighter libraries import at module level
# (PIL.Image 27-39 ms and +3 MiB, tokenizers 17 ms, psutil 28 ms).
HEAVY_LIBRARIES: dict[str, str] = {
    "diffusers": "9.9 s, +663 MiB (pulls torch)",
    "deepspeed": "7.7 s, +636 MiB (pulls torch)",
    "open_clip": "7.2 s, +759 MiB (pulls torch, timm, transformers)",
    "img2dataset": "7.1 s, +668 MiB (pulls torch, pandas, cv2, albumentations, wandb)",
    "torch": "3.3 s, +496 MiB",
    "mlflow": "2.6 s, +156 MiB (pulls pandas, pyarrow)",
    "scipy": "1.1 s for `from scipy import linalg`, +16 MiB",
    "transformers": "1.0 s, +47 MiB on its own; its model classes pull torch",
    "matplotlib": "0.9 s, +33 MiB",
    "ray": "0.7 s, +55 MiB",
    "pandas": "0.7 s, +92 MiB",
    "pyarrow": "0.24 s, +42 MiB",
    "fsspec": "0.20 s, +14 MiB",
    "cv2": "0.19 s, +31 MiB",
    "numpy": "0.10 s, +14 MiB",
}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module of the package
    path: Path  # the importing file
    line: int
    runs: str = "module"  # when: "module" (as the module loads), "function" (when called), "type_checking" (never)
    comment: str = ""  # the comment written on the import statement's lines, if any

    def where(self, root: Path) -> str:
        return f"{self.path.relative_to(root)}:{self.line}"


def package_modules(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every module of `package` (a folder under `root`)."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def package_imports(root: Path, package: str) -> list[Import]:
    """Every import of a module of `package` by a module of `package`, wherever it is written (module level,
    functions, `if TYPE_CHECKING:` blocks), relative imports resolved."""
    modules = package_modules(root, package)
    return [imp for imp in imports_by(modules, modules) if imp.target in modules]


def imports_by(sources: Mapping[str, Path], known: Mapping[str, Path]) -> Iterator[Import]:
    """Every import written in the `sources` modules: of a `known` module when it names one (`from a import b`
    imports the module a.b when there is one, else a name defined in a), else of the top-level library it names."""
    for source, path in sources.items():
        is_package = path.name == "__init__.py"
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        for node, runs in _import_statements(ast.parse(text, filename=str(path)).body, "module"):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                base = _absolute_base(source, is_package, node)
                names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
            comment = " ".join(line.partition("#")[2].strip() for line in lines[node.lineno - 1:node.end_lineno])
            for target in dict.fromkeys(_known_module(name, known) or name.partition(".")[0] for name in names):
                if target != source:
                    yield Import(source, target, path, node.lineno, runs, comment.strip())


def _import_statements(nodes: Iterable[ast.AST], runs: str) -> Iterator[tuple[ast.Import | ast.ImportFrom, str]]:
    """The import statements among `nodes` and inside them, each with when it runs."""
    for node in nodes:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, runs
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            yield from _import_statements(ast.iter_child_nodes(node), "function")
        elif isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            yield from _import_statements(node.body, "type_checking")
            yield from _import_statements(node.orelse, runs)
        else:
            yield from _import_statements(ast.iter_child_nodes(node), runs)


def layer_of(module: str, layers: tuple[tuple[str, tuple[str, ...], str], ...], package: str) -> int | None:
    """Index of the module's layer: the row naming the module or its closest enclosing package (the root package
    only matches itself, so a module nobody placed is reported, not silently put at the bottom)."""
    best, best_length = None, -1
    for index, (_, members, _) in enumerate(layers):
        for member in members:
            matches = module == member or (member != package and module.startswith(member + "."))
            if matches and len(member) > best_length:
                best, best_length = index, len(member)
    return best


def layer_violations(root: Path, package: str, layers: tuple[tuple[str, tuple[str, ...], str], ...]) -> list[str]:
    """One line per module without a layer and per import from a higher layer, naming file:line and the rule."""
    order = " < ".join(name for name, _, _ in layers)
    problems = [f"{path.relative_to(root)}: module {module} has no layer; add it to LAYERS in "
                f"tests/test_import_layers.py (layers, lowest first: {order})"
                for module, path in package_modules(root, package).items() if layer_of(module, layers, package) is None]
    for imp in package_imports(root, package):
        low, high = layer_of(imp.source, layers, package), layer_of(imp.target, layers, package)
        if low is not None and high is not None and high > low:
            problems.append(f"{imp.where(root)}: {imp.source} ({layers[low][0]}) imports {imp.target} "
                            f"({layers[high][0]}), a higher layer; a module imports only its own layer and those "
                            f"below ({order}): move the shared code down, or the caller up")
    return problems


def import_cycles(root: Path, package: str) -> list[str]:
    """One line per circle of modules importing each other: each import of the circle as file:line."""
    imports = package_imports(root, package)
    edges: dict[str, dict[str, Import]] = {}
    for imp in imports:
        edges.setdefault(imp.source, {}).setdefault(imp.target, imp)
    cycles = []
    for component in _strongly_connected(edges):
        start = min(component)
        path = _path_back(start, edges, component)
        hops = " -> ".join(f"{imp.where(root)} imports {imp.target}" for imp in path)
        group = f" (one circle of {len(component)} modules importing each other)" if len(component) > len(path) else ""
        cycles.append(f"import cycle: {hops}{group}; break it by moving what they share into a module below them")
    return sorted(cycles)


def late_imports_without_reason(root: Path, packages: tuple[str, ...], heavy: Mapping[str, str]) -> list[str]:
    """One line per import of a module of `packages[0]` inside a function that could as well be at module level:
    the imported module, with all it imports at module level, loads no `heavy` library that the importing module
    does not load already, and no comment on the import says why it waits."""
    known = {name: path for package in packages for name, path in package_modules(root, package).items()}
    imports = list(imports_by(known, known))
    eager: dict[str, set[str]] = {}
    for imp in imports:
        if imp.runs == "module":
            eager.setdefault(imp.source, set()).add(imp.target)

    def heavy_loaded(module: str) -> set[str]:
        loaded, waiting = set(), [module]
        while waiting:
            name = waiting.pop()
            if name not in loaded:
                loaded.add(name)
                parents = [name.rsplit(".", depth)[0] for depth in range(1, name.count(".") + 1)]
                waiting += [*eager.get(name, ()), *parents]
        return loaded & heavy.keys()

    return [f"{imp.where(root)}: {imp.source} imports {imp.target} inside a function, though it loads no heavy "
            f"library (HEAVY_LIBRARIES in tests/test_import_layers.py) that {imp.source} lacks: move it to module "
            f"level, or say in a comment on the import why it must wait"
            for imp in imports if imp.runs == "function" and imp.target.partition(".")[0] == packages[0]
            and not heavy_loaded(imp.target) - heavy_loaded(imp.source) and not imp.comment]


def _absolute_base(source: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    parts = source.split(".") if is_package else source.split(".")[:-1]
    parts = parts[:len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def _known_module(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _strongly_connected(edges: dict[str, dict[str, Import]]) -> list[set[str]]:
    """Tarjan's algorithm; only the components that hold a circle (more than one module)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return components


def _path_back(start: str, edges: dict[str, dict[str, Import]], component: set[str]) -> list[Import]:
    """The shortest chain of imports from `start` back to itself inside its component (breadth first)."""
    previous: dict[str, Import] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target, imp in sorted(edges.get(node, {}).items()):
                if target not in component or target in previous:
                    continue
                previous[target] = imp
                if target == start:
                    chain = [imp]
                    while chain[0].source != start:
                        chain.insert(0, previous[chain[0].source])
                    return chain
                following.append(target)
        frontier = following
    raise AssertionError(f"{start} is in a strongly connected component but no path leads back to it")


# -- the contract ---------------------------------------------------------------------------------------------

def test_every_module_sits_in_a_layer_and_imports_only_its_own_and_lower_layers():
    problems = layer_violations(REPO, "vlv", LAYERS)
    assert not problems, "\n".join(problems)


def test_no_modules_import_each_other_in_a_circle():
    cycles = import_cycles(REPO, "vlv")
    assert not cycles, "\n".join(cycles)


def test_a_module_of_vlv_is_imported_inside_a_function_only_to_put_off_a_heavy_library():
    problems = late_imports_without_reason(REPO, ("vlv", "pipelines"), HEAVY_LIBRARIES)
    assert not problems, "\n".join(problems)


# What the driver (config loading, planning, `vlv status`) loads of HEAVY_LIBRARIES: the store and the steps' output
# schemas need fsspec, numpy and pyarrow.
DRIVER_LIBRARIES = {"fsspec", "numpy", "pyarrow"}


def test_the_driver_loads_no_heavy_library_beyond_what_its_config_and_store_need():
    code = ("import sys, vlv.config, vlv.run, vlv.cli, vlv.pipeline; "
            "print(' '.join({name.partition('.')[0] for name in sys.modules}))")
    loaded = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True, text=True).stdout
    extra = sorted(set(loaded.split()) & HEAVY_LIBRARIES.keys() - DRIVER_LIBRARIES)
    assert not extra, f"importing the driver loads {extra}: import them inside the functions that need them"


def test_the_layer_table_names_only_existing_modules():
    modules = package_modules(REPO, "vlv")
    unknown = [member for _, members, _ in LAYERS for member in members if member not in modules]
    assert not unknown, f"LAYERS names modules that do not exist: {unknown}"


# -- the checker, on a package made for it ---------------------------------------------------------------------

def _write(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


TOY_LAYERS = (("low", ("toy", "toy.low"), ""), ("high", ("toy.high",), ""))


def test_the_checker_reports_an_upward_import_inside_a_function_and_the_cycle_it_closes(tmp_path):
    _write(tmp_path, {
        "toy/__init__.py": "",
        "toy/low/__init__.py": "",
        "toy/low/base.py": "import os\n\n\ndef helper():\n    from toy.high import top\n\n    return top\n",
        "toy/low/other.py": "from . import base\n",
        "toy/high/__init__.py": "",
        "toy/high/top.py": "from ..low.base import helper\nimport json\n",
    })
    assert layer_violations(tmp_path, "toy", TOY_LAYERS) == [
        "toy/low/base.py:5: toy.low.base (low) imports toy.high.top (high), a higher layer; a module imports only its "
        "own layer and those below (low < high): move the shared code down, or the caller up"]
    assert import_cycles(tmp_path, "toy") == [
        "import cycle: toy/high/top.py:1 imports toy.low.base -> toy/low/base.py:5 imports "
        "toy.high.top; break it by moving what they share into a module below them"]


def test_the_checker_reports_a_cycle_within_one_layer_and_a_module_without_a_layer(tmp_path):
    _write(tmp_path, {
        "toy/__init__.py": "",
        "toy/low/__init__.py": "",
        "toy/low/a.py": "from toy.low import b\n",
        "toy/low/b.py": "import toy.low.c\n",
        "toy/low/c.py": "if True:\n    from toy.low.a import name\n",
        "toy/stray.py": "from toy.low.a import name\n",
    })
    assert import_cycles(tmp_path, "toy") == [
        "import cycle: toy/low/a.py:1 imports toy.low.b -> toy/low/b.py:1 imports toy.low.c -> "
        "toy/low/c.py:2 imports toy.low.a; break it by moving what they share into a module below them"]
    problems = layer_violations(tmp_path, "toy", TOY_LAYERS)
    assert problems == ["toy/stray.py: module toy.stray has no layer; add it to LAYERS in "
                        "tests/test_import_layers.py (layers, lowest first: low < high)"]


def test_the_checker_passes_a_package_that_keeps_the_rules(tmp_path):
    _write(tmp_path, {
        "toy/__init__.py": "",
        "toy/low/__init__.py": "",
        "toy/low/base.py": "VALUE = 1\n",
        "toy/high/__init__.py": "",
        "toy/high/top.py": "from toy.low.base import VALUE\n\n\ndef f():\n    from toy.low import base\n\n"
                           "    return base\n",
    })
    assert layer_violations(tmp_path, "toy", TOY_LAYERS) == []
    assert import_cycles(tmp_path, "toy") == []


def test_the_checker_lets_an_import_wait_only_for_a_heavy_library_or_with_a_reason(tmp_path):
    _write(tmp_path, {
        "toy/__init__.py": "",
        "toy/light.py": "import json\n",
        "toy/heavy.py": "from toy import light\nimport sqlite3\n",
        "toy/via_heavy.py": "from . import heavy\n",
        "toy/user.py": "def f():\n    from toy import light\n    from toy import via_heavy\n"
                       "    from toy import light as again  # late: a test swaps toy.light first\n",
        "toy/loaded.py": "import sqlite3\n\n\ndef f():\n    from toy import (\n        heavy,\n    )\n",
    })
    assert late_imports_without_reason(tmp_path, ("toy",), {"sqlite3": "a stand-in"}) == [
        "toy/loaded.py:5: toy.loaded imports toy.heavy inside a function, though it loads no heavy library "
        "(HEAVY_LIBRARIES in tests/test_import_layers.py) that toy.loaded lacks: move it to module level, or say in "
        "a comment on the import why it must wait",
        "toy/user.py:2: toy.user imports toy.light inside a function, though it loads no heavy library "
        "(HEAVY_LIBRARIES in tests/test_import_layers.py) that toy.user lacks: move it to module level, or say in "
        "a comment on the import why it must wait"]
