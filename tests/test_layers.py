"""One-way layers (docs: design): a module imports only its own layer or lower ones, read from the source's AST.

Lowest first. `synth` (synthetic slides, cohorts and stores) sits with `stages` and `bench`: it is a generator of
test inputs that the demo stage and the benchmarks call, and no part of the pipeline below them may depend on
synthetic data; it needs only `slides` and `store`, so it could sit lower, but nothing lower has a reason to use it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "mixmag"

LAYERS: list[set[str]] = [
    {
        "mixmag",
        "geometry",
        "errors",
        "ids",
        "fileio",
        "markup",
        "config",
        "tables",
        "devices",
        "metrics",
        "weights_io",
        "images",
        "threads",
        "ranks",
        "claims",
        "slide_state",
        "workers",
    },  # __init__: "mixmag"
    {"slides"},
    {"store", "catalog", "encoders", "interop"},
    {"data", "models", "runs"},
    {"train"},
    {"eval", "report"},
    {"stages", "bench", "synth"},
    {"studies"},
    {"cli", "api"},
]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}
# imports the layers allow but a unit's job forbids: models know tensors only, never files, bags or cohorts
FORBIDDEN = {"models": {"data"}}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def unit_of(module: str) -> str:
    """The layer unit of a module: its top-level module or sub-package under mixmag."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "mixmag"


def imports_of(module: str) -> list[tuple[int, str, bool]]:
    """(line, imported mixmag module, inside a function) for every import of ours in the module, at any depth."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[tuple[int, str, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend(
                    (child.lineno, a.name, in_function) for a in child.names if a.name.split(".")[0] == "mixmag"
                )
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - child.level + 1]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if target.split(".")[0] != "mixmag":
                    continue
                for alias in child.names:  # `from . import store` imports the module mixmag.store
                    sub = f"{target}.{alias.name}"
                    found.append((child.lineno, sub if sub in MODULES else target, in_function))
            visit(child, inner)

    visit(tree, False)
    return sorted(set(found))


def function_imports_outside_cli() -> list[str]:
    """Imports of our own modules inside functions (outside the CLI, where they only hide cycles)."""
    return [
        f"{MODULES[m].relative_to(SRC.parent)}:{line} imports {target}"
        for m in MODULES
        if m != "mixmag.cli"
        for line, target, inside in imports_of(m)
        if inside
    ]


def test_every_module_has_a_layer():
    unplaced = sorted({unit_of(m) for m in MODULES} - set(RANK))
    assert not unplaced, f"place these in LAYERS (and the design doc): {unplaced}"


def test_no_module_imports_a_higher_layer():
    upward = []
    for module in MODULES:
        here = RANK[unit_of(module)]
        for line, target, _ in imports_of(module):
            there = RANK.get(unit_of(target), -1)
            if there > here:
                upward.append(
                    f"{MODULES[module].relative_to(SRC.parent)}:{line} imports {target} "
                    f"({unit_of(target)}, layer {there} > {unit_of(module)}, layer {here})"
                )
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def test_nothing_imports_the_cli():
    users = [m for m in MODULES if m != "mixmag.cli" and any(unit_of(t) == "cli" for _, t, _ in imports_of(m))]
    assert not users


def forbidden_imports() -> list[str]:
    """Imports of a unit that FORBIDDEN rules out, although they go to the unit's own layer."""
    return [
        f"{MODULES[m].relative_to(SRC.parent)}:{line} imports {target}"
        for m in MODULES
        for line, target, _ in imports_of(m)
        if unit_of(target) in FORBIDDEN.get(unit_of(m), set())
    ]


def test_models_know_tensors_only():
    found = forbidden_imports()
    assert not found, "\n".join(found)


def test_the_models_rule_catches_a_breach(monkeypatch):
    fake = SRC / "models" / "_breach_probe.py"
    monkeypatch.setitem(MODULES, "mixmag.models._breach_probe", fake)
    monkeypatch.setattr(
        Path, "read_text", lambda self, *a, **k: "from ..data import bags\n" if self == fake else _read(self)
    )
    assert "mixmag/models/_breach_probe.py:1 imports mixmag.data.bags" in forbidden_imports()


def test_no_imports_hidden_in_functions_outside_the_cli():
    """Lazy imports of heavy third-party libraries are fine; an import of our own module inside a function is a
    cycle dodged or a layer crossed unseen, so it is not."""
    hidden = function_imports_outside_cli()
    assert not hidden, "\n".join(hidden)


def test_no_import_cycles_between_modules():
    graph = {m: {t for _, t, _ in imports_of(m) if t in MODULES and t != m} for m in MODULES}
    cycle = _find_cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


MAX_FUNCTION_LINES = 80  # docs/design.md, style: a longer function is cut along its seams (the Trainer shows how)
LONG_BY_NATURE = {  # functions that are tables, not logic: the rule does not apply (keep this list short)
    "mixmag/encoders/presets.py:_vit_presets": "the transformer encoders' presets, one entry per model",
}


def long_functions(source: str, where: str) -> list[str]:
    """Functions and methods longer than MAX_FUNCTION_LINES, counted from `def` to the last line of the body (a
    command's typer options count: a command that outgrows the rule hands its work to its stage)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                found.append(f"{where}:{node.lineno} {node.name} is {lines} lines")
    return found


def test_no_function_is_longer_than_the_rule():
    found = [f for m, path in MODULES.items() for f in long_functions(_read(path), str(path.relative_to(SRC.parent)))]
    found = [f for f in found if f"{f.split(':')[0]}:{f.split(' ')[1]}" not in LONG_BY_NATURE]
    assert not found, "\n".join(found)


def test_the_length_rule_catches_a_breach():
    body = [f"        x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES)]
    too_long = "class A:\n    def f(self):\n" + "".join(body)  # the def line and 80 more
    assert long_functions(too_long, "a.py") == [f"a.py:2 f is {MAX_FUNCTION_LINES + 1} lines"]
    assert long_functions("def g():\n" + "".join(body[1:]), "b.py") == []  # 80 lines: at the limit


@pytest.mark.parametrize("rule", ["upward", "hidden"])
def test_the_rules_catch_a_breach(tmp_path, monkeypatch, rule):
    """The checks themselves: a made-up module that breaks a rule is reported."""
    source = "from ..eval import runs\n" if rule == "upward" else "def f():\n    from .. import store\n"
    fake = SRC / "train" / "_breach_probe.py"
    monkeypatch.setitem(MODULES, "mixmag.train._breach_probe", fake)
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: source if self == fake else _read(self))
    if rule == "upward":
        with pytest.raises(AssertionError, match="_breach_probe.py:1 imports mixmag.eval.runs"):
            test_no_module_imports_a_higher_layer()
    else:
        assert "mixmag/train/_breach_probe.py:2 imports mixmag.store" in function_imports_outside_cli()


def _read(path: Path) -> str:
    with open(path, encoding="utf-8") as fh:
        return fh.read()
