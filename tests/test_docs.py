"""The documentation names real things: every function, test and file it points to exists, so a rename that
forgets the docs fails here; and nothing in the project points outside it."""

from __future__ import annotations

import ast
import re
import subprocess
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
CODE_REF = re.compile(r"`(mixmag(?:\.\w+)*):([\w.]+)`")
TEST_REF = re.compile(r"(tests/[\w/]+\.py)::(\w+)")
FILE_REF = re.compile(r"`((?:src|tests|configs|scripts|benchmarks)/[\w./+-]*\w)`")
LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")
OUTSIDE = ".." + "/shared"  # spelt in two parts so that this file does not match itself


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


@lru_cache(maxsize=None)
def _tree(path: Path) -> ast.Module:
    return ast.parse(_text(path), filename=str(path))


def _defined(body: list[ast.stmt]) -> dict[str, ast.AST]:
    """Names a module or class body defines: functions, classes, assignments (incl. annotated fields)."""
    names: dict[str, ast.AST] = {}
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, ast.Assign):
            names.update({t.id: node for t in node.targets if isinstance(t, ast.Name)})
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = node
    return names


def _module_file(module: str) -> Path | None:
    base = ROOT / "src" / Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def code_ref_problem(module: str, attribute: str) -> str | None:
    """None when `module:attribute` (attribute may be Class.method) is defined in src/, else why not."""
    path = _module_file(module)
    if path is None:
        return f"{module}: no such module under src/"
    body = _tree(path).body
    for part in attribute.split("."):
        node = _defined(body).get(part)
        if node is None:
            return f"{module}:{attribute}: {part!r} is not defined in {path.relative_to(ROOT)}"
        body = node.body if isinstance(node, ast.ClassDef) else []
    return None


def named_test_problem(file: str, name: str) -> str | None:
    path = ROOT / file
    if not path.is_file():
        return f"{file}: no such test file"
    names = {n.name for n in ast.walk(_tree(path)) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    return None if name in names else f"{file}::{name}: no such test"


def broken_references(text: str, where: Path) -> list[str]:
    problems = [code_ref_problem(m, a) for m, a in CODE_REF.findall(text)]
    problems += [named_test_problem(f, n) for f, n in TEST_REF.findall(text)]
    problems += [f"{f}: no such file or folder" for f in FILE_REF.findall(text) if not (ROOT / f).exists()]
    for link in LINK.findall(text):
        if "://" not in link and not link.startswith("mailto:") and not (where.parent / link).exists():
            problems.append(f"link to {link}: no such file")
    return [f"{where.relative_to(ROOT)}: {p}" for p in problems if p]


def test_the_docs_exist_and_the_index_lists_them():
    names = {p.name for p in DOCS}
    assert {"README.md", "method.md", "design.md", "formats.md"} <= names
    index = _text(ROOT / "docs" / "README.md")
    assert all(f"({name})" in index for name in names - {"README.md"}), "docs/README.md must link every page"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_function_test_and_file_the_docs_name_exists(doc):
    assert broken_references(_text(doc), doc) == []


def test_every_function_test_file_and_link_the_readme_names_exists():
    readme = ROOT / "README.md"
    assert broken_references(_text(readme), readme) == []


def test_each_guarantee_in_the_readme_names_the_tests_that_back_it():
    text = _text(ROOT / "README.md")
    section = text.split("## What mixmag guarantees", 1)[1].split("\n## ", 1)[0]
    promises = {
        m.group(1): m.group(2) for m in re.finditer(r"^- \*\*(.+?)\*\*(.*?)(?=^- \*\*|\Z)", section, re.M | re.S)
    }
    assert list(promises) == [
        "Atomic outputs.",
        "Resume.",
        "Per-slide isolation.",
        "Safe ids.",
        "Untrusted files.",
        "Bounded decoding.",
        "Locks.",
        "Links and special files.",
        "Where outputs land.",
        "Size caps.",
        "Unwritable outputs.",
        "Escaped output.",
    ]
    for promise, body in promises.items():
        files = re.findall(r"`(tests/\w+\.py)`", body)
        assert files, f"{promise} names no test file"
        assert all((ROOT / f).is_file() for f in files), (promise, files)


def test_the_checker_catches_a_renamed_function_and_a_missing_test():
    text = (
        "`mixmag.models.mem:reconstruction_loss` `mixmag.models.mem:no_such_loss` "
        "`mixmag.models.mixer:RegionMixer.tokens` "
        "`mixmag.models.mixer:RegionMixer.no_such_method` tests/test_mixer.py::test_reconstruction_loss_is_eq2 "
        "tests/test_mixer.py::test_no_such_thing `src/mixmag/geometry.py` `src/mixmag/no_such.py` [x](no-such.md)"
    )
    problems = broken_references(text, ROOT / "docs" / "x.md")
    assert len(problems) == 5, problems
    assert all(
        bad in " ".join(problems)
        for bad in ("no_such_loss", "no_such_method", "test_no_such_thing", "no_such.py", "no-such.md")
    )


def _project_files() -> list[Path]:
    """Tracked files (git), or every file outside .git and virtual environments when there is no git checkout."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, text=True).stdout
        return [ROOT / name for name in listed.split("\0") if name]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "venv", "node_modules", "__pycache__"}
        return [p for p in ROOT.rglob("*") if p.is_file() and not skip & set(p.relative_to(ROOT).parts)]


def test_nothing_in_the_project_points_outside_it():
    offenders = []
    for path in _project_files():
        if path.is_file():
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue  # binary: slides, pictures
            if OUTSIDE in text:
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == [], f"files that refer to {OUTSIDE}: {offenders}"
