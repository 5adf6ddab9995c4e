"""Does this Python environment run mixmag as installed? Checked before any benchmark spends device time: every
requirement of the installed distribution present at a version it allows, every module importable (modules of an
optional extra may miss their package), and mixmag imported from where the caller expects (the wheel, not a checkout).
Also computes which wheels a machine with a known package list lacks (scripts/device-wheels.sh)."""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import pkgutil
import platform
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.version import Version

import mixmag

from ..errors import MixmagError


class EnvironmentMismatchError(MixmagError):
    """The Python environment lacks a requirement, holds a version mixmag does not allow, or cannot import mixmag."""


@dataclass(frozen=True)
class RequirementCheck:
    name: str
    specifier: str
    installed: str | None

    @property
    def ok(self) -> bool:
        return (
            self.installed is not None
            and Version(self.installed) in Requirement(f"{self.name}{self.specifier}").specifier
        )


def normalize(name: str) -> str:
    """PEP 503 name: pylibCZIrw, pylibczirw and pylib_czirw are one package."""
    return re.sub(r"[-_.]+", "-", name).lower()


def core_requirements(requires: list[str], environment: dict | None = None) -> list[Requirement]:
    """The requirements that apply without extras, markers evaluated for `environment` (this interpreter by default)."""
    env = default_environment() | (environment or {}) | {"extra": ""}
    return [r for r in map(Requirement, requires) if r.marker is None or r.marker.evaluate(env)]


def check_versions(
    requires: list[str], versions: dict[str, str], environment: dict | None = None
) -> list[RequirementCheck]:
    """Each core requirement against `versions` (normalized name -> version); missing ones have installed=None."""
    return [
        RequirementCheck(r.name, str(r.specifier), versions.get(normalize(r.name)))
        for r in core_requirements(requires, environment)
    ]


def installed_versions() -> dict[str, str]:
    """Normalized name -> version of the copy that imports: the first on sys.path (a wheel in a target folder on
    PYTHONPATH shadows the environment's own copy)."""
    versions: dict[str, str] = {}
    for dist in metadata.distributions():  # in sys.path order
        if dist.metadata["Name"]:
            versions.setdefault(normalize(dist.metadata["Name"]), dist.version)
    return versions


def optional_modules(requires: list[str]) -> set[str]:
    """Import names that only an extra brings (a module needing one may fail to import where it is not installed)."""
    names = {
        normalize(Requirement(r).name)
        for r in requires
        if Requirement(r).marker is not None and "extra" in str(Requirement(r).marker)
    }
    return names | {n.replace("-", "_") for n in names}


def import_failures(package: str, optional: set[str]) -> tuple[list[str], list[str]]:
    """(modules that failed to import, modules skipped for want of an optional extra's package)."""
    root = importlib.import_module(package)
    failed: list[str] = []
    skipped: list[str] = []
    for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
        try:
            importlib.import_module(info.name)
        except ModuleNotFoundError as e:
            missing = normalize((e.name or "").split(".")[0])
            (skipped if missing in optional else failed).append(f"{info.name} ({e})")
        except Exception as e:  # noqa: BLE001 - any import error is the finding
            failed.append(f"{info.name} ({type(e).__name__}: {e})")
    return failed, skipped


def check_environment(expect_under: Path | None = None) -> dict:
    """Everything above for the installed mixmag; raises EnvironmentMismatchError naming each problem."""
    requires = metadata.requires("mixmag") or []
    checks = check_versions(requires, installed_versions())
    failed, skipped = import_failures("mixmag", optional_modules(requires))
    where = Path(mixmag.__file__).resolve().parent
    problems = [f"{c.name}{c.specifier} needed, {c.installed or 'not installed'} found" for c in checks if not c.ok]
    problems += [f"import {m} failed" for m in failed]
    if expect_under is not None and not where.is_relative_to(expect_under.resolve()):
        problems.append(f"mixmag was imported from {where}, not from the wheel installed under {expect_under}")
    report = {
        "python": platform.python_version(),
        "mixmag": str(where),
        "requirements": {c.name: c.installed for c in checks},
        "skipped_optional_modules": skipped,
        "problems": problems,
    }
    if problems:
        raise EnvironmentMismatchError(
            "this Python environment cannot run mixmag: "
            + "; ".join(problems)
            + " (install the missing wheels; see scripts/device-wheels.sh)"
        )
    return report


def read_package_list(path: Path) -> dict[str, str | None]:
    """A machine's package list: one `name` or `name==version` a line, # comments (scripts/device-packages.txt)."""
    packages: dict[str, str | None] = {}
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            packages[normalize(name)] = version.strip() or None
    return packages


def wheels_needed(roots: list[str], present: set[str], environment: dict | None = None) -> dict[str, str]:
    """Name -> version (as installed here) of every package that `roots` need, directly or through each other, and
    that `present` lacks: what a machine with that package list must be brought as wheels."""
    local = installed_versions()
    needed: dict[str, str] = {}
    todo = list(core_requirements(roots, environment))
    while todo:
        name = normalize(todo.pop().name)
        if name in present or name in needed:
            continue
        if name not in local:
            raise EnvironmentMismatchError(
                f"{name} is needed but not installed here, so its version is unknown: "
                "install mixmag into this environment first (scripts/setup-env.sh)"
            )
        needed[name] = local[name]
        todo += core_requirements(metadata.requires(name) or [], environment)
    return needed


def python_environment(version: str) -> dict:
    """Marker values for another CPython `version` (e.g. the device's 3.12.3) on this platform."""
    return {
        "python_version": ".".join(version.split(".")[:2]),
        "python_full_version": version,
        "implementation_version": version,
        "sys_platform": sys.platform,
    }
