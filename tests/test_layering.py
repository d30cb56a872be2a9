"""Import direction (DESIGN.md, "Layers"): a module imports only from layers below it.

Every ``.py`` under ``src/lowbit`` is parsed with ``ast``; each absolute (``lowbit.x.y``) and
relative (``from ..x import y``) import, including imports inside functions and under
``TYPE_CHECKING``, is resolved to the module it names and checked against :data:`LAYER_MAP`.
Dynamic imports (``importlib.import_module``) are not seen.

Rules:
  * an import may point to the same layer or a lower one, never a higher one;
  * primitives/ (L2) is pure: it imports only from L0, not from config/recipe/presets (L1);
  * the package root ``lowbit/__init__.py`` is the public API (L9): only L8 (cli/, zoo/)
    imports it, i.e. ``from lowbit import x`` where ``x`` is not a submodule;
  * nothing outside cli/ imports ``lowbit.cli`` (except ``__main__.py``, which runs it:
    ``python -m lowbit``);
  * no algorithm imports another algorithm; algorithms share code only through the helpers
    named in :data:`SHARED_ALGORITHM_HELPERS`;
  * importing a package (its ``__init__``) counts as that package's layer;
  * every file must be in :data:`LAYER_MAP`, so that a new file's layer is a decision;
  * library code logs; only cli/ calls ``print``.
"""

from __future__ import annotations

import ast
import fnmatch
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "lowbit"
PACKAGE_DIR = Path(__file__).resolve().parents[1] / "src" / PACKAGE

PUBLIC_API = 9  # the package root, lowbit/__init__.py

#: (pattern relative to src/lowbit, layer); the first matching pattern wins.
LAYER_MAP: list[tuple[str, int]] = [
    ("__init__.py", PUBLIC_API),
    # L0: vocabulary, errors, records, metrics; torch only
    ("_version.py", 0),
    ("types.py", 0),
    ("errors.py", 0),
    ("records.py", 0),
    ("runtime.py", 0),
    ("primitives/metrics.py", 0),
    # L1: configuration
    ("config.py", 1),
    ("recipe.py", 1),
    ("presets.py", 1),
    # L2: pure tensor functions
    ("primitives/*", 2),
    # L3: range finders and kernels
    ("observers/*", 3),
    ("kernels/*", 3),
    # L4: modules
    ("nn/*", 4),
    # L5: whole-model flow
    ("model/*", 5),
    ("distributed.py", 5),
    ("distributed/*", 5),
    # L6: algorithms and mixed-precision search
    ("algorithms/*", 6),
    ("search/*", 6),
    ("workflow.py", 6),
    # L7: read-only consumers
    ("report/*", 7),
    ("export/*", 7),
    # L8: front ends, on top of the public API
    ("cli/*", 8),
    ("__main__.py", 8),  # `python -m lowbit`: runs the command
    ("zoo/*", 8),
    ("compat/*", 8),
]

#: Files under algorithms/ that every algorithm may import: the shared block runner, the
#: scale folding of AWQ/SmoothQuant and the base classes. Matched against the first path component under algorithms/.
SHARED_ALGORITHM_HELPERS: tuple[str, ...] = ("_runner*", "_fold*", "base*")


def layer_of(relpath: str) -> int | None:
    """The layer of a file given by its path relative to src/lowbit, or None if unmapped."""
    for pattern, layer in LAYER_MAP:
        if fnmatch.fnmatchcase(relpath, pattern):
            return layer
    return None


def module_name(relpath: str) -> str:
    """``nn/linear.py`` -> ``lowbit.nn.linear``; ``nn/__init__.py`` -> ``lowbit.nn``."""
    parts = [PACKAGE, *relpath[: -len(".py")].split("/")]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@dataclass(frozen=True)
class Edge:
    source: str  # path relative to src/lowbit
    line: int
    target: str  # dotted module name


def _imported_modules(relpath: str, tree: ast.AST, modules: dict[str, str]) -> list[Edge]:
    """Every lowbit module that ``relpath`` imports. ``modules`` maps dotted name -> relpath."""
    this = module_name(relpath)
    package = this if relpath.endswith("__init__.py") else this.rpartition(".")[0]
    edges: list[Edge] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    edges.append(Edge(relpath, node.lineno, alias.name))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                up = node.level - 1
                if up >= len(base_parts):
                    edges.append(Edge(relpath, node.lineno, "<relative import above lowbit>"))
                    continue
                base = ".".join(base_parts[: len(base_parts) - up])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
                if not (base == PACKAGE or base.startswith(PACKAGE + ".")):
                    continue
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                target = submodule if submodule in modules else base
                edges.append(Edge(relpath, node.lineno, target))
    return list(dict.fromkeys(edges))  # `from x import a, b` is one edge


def _algorithm_of(relpath: str) -> str | None:
    """The algorithm a file under algorithms/ belongs to (first path component), else None."""
    parts = relpath.split("/")
    if parts[0] != "algorithms" or len(parts) < 2:
        return None
    return parts[1][: -len(".py")] if parts[1].endswith(".py") else parts[1]


def _is_shared_helper(algorithm: str) -> bool:
    return any(fnmatch.fnmatchcase(algorithm, pattern) for pattern in SHARED_ALGORITHM_HELPERS)


def check_sources(sources: dict[str, str]) -> list[str]:
    """All layering problems in ``sources`` (path relative to src/lowbit -> source text)."""
    problems: list[str] = []
    modules = {module_name(relpath): relpath for relpath in sources}
    trees: dict[str, ast.AST] = {}
    for relpath, text in sorted(sources.items()):
        if layer_of(relpath) is None:
            problems.append(
                f"src/lowbit/{relpath}: not in the layer map; add it to LAYER_MAP in "
                f"tests/test_layering.py with its layer from DESIGN.md"
            )
        try:
            trees[relpath] = ast.parse(text, filename=relpath)
        except SyntaxError as exc:
            problems.append(f"src/lowbit/{relpath}:{exc.lineno}: cannot be parsed: {exc.msg}")

    for relpath, tree in trees.items():
        src_layer = layer_of(relpath)
        if relpath.split("/")[0] != "cli":
            for node in ast.walk(tree):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                        and node.func.id == "print"):
                    problems.append(
                        f"src/lowbit/{relpath}:{node.lineno}: calls print(); library code logs "
                        f"through `logging` (only cli/ owns the terminal)"
                    )
        if src_layer is None:
            continue
        for edge in _imported_modules(relpath, tree, modules):
            where = f"src/lowbit/{relpath}:{edge.line}: {module_name(relpath)} (L{src_layer})"
            if edge.target == module_name(relpath):
                continue
            target_relpath = modules.get(edge.target)
            if target_relpath is None:
                problems.append(f"{where} imports {edge.target}, which is not a lowbit module")
                continue
            dst_layer = layer_of(target_relpath)
            if dst_layer is None:
                continue  # reported above as unmapped
            imports = f"{where} imports {edge.target} (L{dst_layer})"

            if edge.target == "lowbit.cli" or edge.target.startswith("lowbit.cli."):
                if relpath.split("/")[0] != "cli" and relpath != "__main__.py":
                    problems.append(f"{imports}: nothing imports lowbit.cli")
                continue
            if dst_layer == PUBLIC_API:
                if src_layer != 8:
                    problems.append(
                        f"{imports}: only cli/ and zoo/ (L8) import the public API `lowbit`; "
                        f"import the defining module instead"
                    )
                continue
            if dst_layer > src_layer:
                problems.append(f"{imports}: upward edge; a module imports only from layers below it")
                continue
            if src_layer == 2 and dst_layer == 1:
                problems.append(f"{imports}: primitives/ (L2) are pure and import only from L0")
                continue
            src_alg, dst_alg = _algorithm_of(relpath), _algorithm_of(target_relpath)
            if (src_alg is not None and dst_alg is not None and src_alg != dst_alg
                    and not _is_shared_helper(dst_alg) and not relpath == "algorithms/__init__.py"):
                what = "the algorithms package" if target_relpath == "algorithms/__init__.py" else dst_alg
                problems.append(
                    f"{imports}: no algorithm imports another ({what}); share code through "
                    f"{', '.join('algorithms/' + h for h in SHARED_ALGORITHM_HELPERS)}"
                )
    return problems


def _package_sources() -> dict[str, str]:
    return {
        path.relative_to(PACKAGE_DIR).as_posix(): path.read_text(encoding="utf-8")
        for path in sorted(PACKAGE_DIR.rglob("*.py"))
    }


# ---------------------------------------------------------------------------------------------
# The real package


def test_package_is_found():
    sources = _package_sources()
    assert "_version.py" in sources, f"no lowbit sources under {PACKAGE_DIR}"


def test_lowbit_imports_point_down_the_layers():
    problems = check_sources(_package_sources())
    assert not problems, "layering problems (DESIGN.md, 'Layers'):\n" + "\n".join(problems)


# ---------------------------------------------------------------------------------------------
# The checker itself: proven able to fail on each rule


CLEAN = {
    "__init__.py": "from .types import QType\nfrom .nn.linear import QuantizedLinear\n",
    "types.py": "import torch\nfrom .errors import ConfigError\n",
    "errors.py": "class LowbitError(Exception):\n    pass\n",
    "config.py": "from lowbit.types import QType\n",
    "primitives/__init__.py": "from .affine import quantize\nfrom . import metrics\n",
    "primitives/affine.py": "from ..types import QType\n",
    "primitives/metrics.py": "import torch\n",
    "nn/__init__.py": "",
    "nn/linear.py": "from lowbit.primitives import affine\nfrom ..primitives.affine import quantize\n"
                    "from lowbit import config\n",
    "algorithms/__init__.py": "from . import gptq, awq\n",
    "algorithms/_runner.py": "from ..nn.linear import QuantizedLinear\n",
    "algorithms/base.py": "",
    "algorithms/gptq.py": "from ._runner import run_blocks\nfrom .base import Algorithm\n",
    "algorithms/awq.py": "from lowbit.algorithms._runner import run_blocks\n",
    "cli/__init__.py": "",
    "cli/main.py": "import lowbit\nfrom lowbit import quantize\nfrom . import demo\nprint('hi')\n",
    "cli/demo.py": "from lowbit.zoo import digits\n",
    "zoo/__init__.py": "",
    "zoo/digits.py": "from lowbit import QuantizedLinear\n",
}


def _only_problem(sources: dict[str, str]) -> str:
    problems = check_sources(sources)
    assert len(problems) == 1, problems
    return problems[0]


def test_checker_passes_a_clean_package():
    assert check_sources(CLEAN) == []


def test_checker_reports_an_absolute_upward_edge():
    sources = dict(CLEAN, **{"types.py": "from lowbit.nn.linear import QuantizedLinear\n"})
    problem = _only_problem(sources)
    assert "src/lowbit/types.py:1" in problem and "lowbit.nn.linear (L4)" in problem
    assert "upward edge" in problem


def test_checker_reports_a_relative_upward_edge_inside_a_function():
    sources = dict(CLEAN, **{"primitives/affine.py": "def f():\n    from ..nn import linear\n"})
    problem = _only_problem(sources)
    assert "primitives/affine.py:2" in problem and "lowbit.nn.linear (L4)" in problem


def test_checker_counts_a_package_init_as_its_layer():
    sources = dict(CLEAN, **{"config.py": "from lowbit.primitives import quantize\n"})
    assert "imports lowbit.primitives (L2)" in _only_problem(sources)


def test_checker_keeps_primitives_pure():
    sources = dict(CLEAN, **{"primitives/affine.py": "from ..config import QuantSpec\n"})
    assert "primitives/ (L2) are pure" in _only_problem(sources)


def test_checker_allows_metrics_in_l0_but_not_its_siblings():
    ok = dict(CLEAN, **{"records.py": "from lowbit.primitives.metrics import sqnr\n"})
    assert check_sources(ok) == []
    bad = dict(CLEAN, **{"primitives/metrics.py": "from .affine import quantize\n"})
    assert "upward edge" in _only_problem(bad)


def test_checker_reserves_the_public_api_for_l8():
    sources = dict(CLEAN, **{"nn/linear.py": "from lowbit import quantize\n"})
    assert "only cli/ and zoo/ (L8) import the public API" in _only_problem(sources)
    sources = dict(CLEAN, **{"nn/linear.py": "import lowbit\n"})
    assert "public API" in _only_problem(sources)


def test_checker_forbids_importing_cli():
    sources = dict(CLEAN, **{"zoo/digits.py": "from lowbit.cli.main import main\n"})
    assert "nothing imports lowbit.cli" in _only_problem(sources)


def test_checker_forbids_one_algorithm_importing_another():
    sources = dict(CLEAN, **{"algorithms/awq.py": "from .gptq import hessian\n"})
    assert "no algorithm imports another (gptq)" in _only_problem(sources)
    sources = dict(CLEAN, **{"algorithms/awq.py": "from lowbit.algorithms import gptq\n"})
    assert "no algorithm imports another (gptq)" in _only_problem(sources)


def test_checker_requires_every_file_in_the_map():
    sources = dict(CLEAN, **{"helpers.py": "import os\n"})
    problem = _only_problem(sources)
    assert "src/lowbit/helpers.py: not in the layer map" in problem and "LAYER_MAP" in problem


def test_checker_reports_imports_of_missing_modules():
    sources = dict(CLEAN, **{"nn/linear.py": "from lowbit.kernels.int8 import mm\n"})
    assert "not a lowbit module" in _only_problem(sources)


def test_checker_forbids_print_outside_cli():
    sources = dict(CLEAN, **{"nn/linear.py": "def f(x):\n    print(x)\n"})
    problem = _only_problem(sources)
    assert "src/lowbit/nn/linear.py:2: calls print()" in problem
