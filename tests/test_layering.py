"""The import order of ../shared/DESIGN.md ("Which way imports point"), read from the code.

Every module of the package sits at a level; a module imports only modules at its own level or
below, at module level and inside functions alike (a function-level import is no way around
the order). `runtime` imports level 1 only, so that running a discrete net needs neither Pyro
nor a trainer; `analysis` stands beside the trainers and uses only the plain pieces. A new
module must be given its level here, which is the point: its place is a decision.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bayesq"

# 1: the plain pieces; 2: the posterior container; 3: the trainers (and what reads their nets);
# 4: bit budgets; 5: the DiscreteNet type and its executions; 6: the builder and the artifact;
# 7: plots.
LEVELS = {
    "_kernels": 1, "kernels": 1, "bitserial": 1, "vnq_kernels": 1, "ops": 1, "quantizers": 1,
    "data": 1, "priors": 1, "checkpoint": 1, "files": 1, "cli": 1, "sparse_codes": 1,
    "bitstream": 1, "position_sets": 1, "checks": 1, "train": 1, "lowbit_gemm": 1, "net_plan": 1,
    "dead_units": 1,
    "sparse_ternary_gemm": 1, "hessian": 1,
    "posterior": 2, "posterior_file": 2,
    "nn": 3, "vnq": 3, "svi": 3, "fit_state": 3, "ebp": 3, "binary_connect": 3,
    "ebp_moments": 3, "analysis": 3, "baselines": 3,
    "bit_rules": 4, "bits": 4, "row_grids": 4, "vnq_snap": 4, "hawq": 4,
    "runtime": 5,
    "quantize": 6, "artifact": 6, "net_costs": 6,
    "plots": 7,
}  # fmt: skip
ONLY_LEVEL_1 = {"runtime", "analysis"}  # DESIGN.md: they import the plain pieces only


def _module_name(path: Path) -> str:
    """The top-level name inside bayesq of a source file: "runtime", "analysis", ..."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _imports(path: Path) -> set[str]:
    """The bayesq modules `path` imports anywhere in it (module or function level)."""
    depth = len(path.relative_to(PACKAGE).parts) - 1  # 0 in bayesq/, 1 in bayesq/analysis/
    return _imports_of(path.read_text(), depth)


def _imports_of(source: str, depth: int) -> set[str]:
    tree = ast.parse(source)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "bayesq" and len(parts) > 1:
                    found.add(parts[1])
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                parts = (node.module or "").split(".")
                if parts[0] != "bayesq":
                    continue
                names = parts[1:2] or [alias.name for alias in node.names]
            elif node.level - 1 < depth:  # a sibling inside a subpackage (e.g. analysis)
                continue
            else:
                names = (node.module or "").split(".")[:1] if node.module else []
                names = names or [alias.name for alias in node.names]
            found.update(names)
    return found


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def test_every_module_has_a_level():
    missing = {_module_name(p) for p in SOURCES} - set(LEVELS)
    assert not missing, f"give these modules a level in tests/test_layering.py: {sorted(missing)}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    name = _module_name(path)
    level = LEVELS[name]
    for imported in sorted(_imports(path) - {name}):
        assert imported in LEVELS, f"{path.name} imports an unknown bayesq module {imported!r}"
        limit = 1 if name in ONLY_LEVEL_1 else level
        assert LEVELS[imported] <= limit, (
            f"{path.relative_to(PACKAGE)} (level {level}) imports {imported} "
            f"(level {LEVELS[imported]}): against DESIGN.md's order"
        )


def test_the_order_test_sees_function_level_imports():
    """The reader finds imports inside functions, relative and absolute, and in a subpackage
    tells its siblings from the package's modules."""
    source = (
        "def f():\n    from .nn import VNQLayer\n    import bayesq.vnq\n    from . import bits\n"
    )
    assert _imports_of(source, 0) == {"nn", "vnq", "bits"}
    assert _imports_of(source, 1) == {"vnq"}
    assert _imports_of("from ..runtime import DiscreteNet\n", 1) == {"runtime"}


def test_running_a_discrete_net_imports_no_pyro():
    """The inference path: load an artifact and run it on the kernels needs torch, numpy, the
    kernels and the op vocabulary, nothing more."""
    code = (
        "import sys, bayesq.runtime, bayesq.artifact, bayesq.quantize\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('pyro', 'arviz')"
        " or m in ('bayesq.nn', 'bayesq.vnq', 'bayesq.ebp', 'bayesq.priors'))\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
