"""scripts/gpu-checks.sh is proven here, on CPU, before any device time is spent on it: the same script in its CPU mode
(mixmag's wheel built and installed into a target folder, the environment check, both benchmarks and the profile summary
at tiny sizes), and the device's known package versions against what mixmag declares."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from mixmag.bench.environment import (
    EnvironmentMismatchError,
    check_versions,
    core_requirements,
    import_failures,
    installed_versions,
    normalize,
    python_environment,
    read_package_list,
    wheels_needed,
)

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
DEVICE = read_package_list(ROOT / "scripts" / "device-packages.txt")
DEVICE_PYTHON = python_environment("3.12.3")


def test_gpu_checks_script_runs_every_step_on_cpu(tmp_path):
    """The device call's script end to end in CPU mode: wheel -> target dir, env check, both benches, figures in OUT."""
    out, site = tmp_path / "out", tmp_path / "site"
    env = os.environ | {
        "MIXMAG_CHECKS": "cpu",
        "PYTHON": sys.executable,
        "WHEELS": str(tmp_path / "wheels"),
        "SITE": str(site),
        "OUT": str(out),
        "WORK": str(tmp_path / "work"),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("PYTHONPATH", None)  # mixmag must come from the installed wheel, not from a checkout on the path
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu-checks.sh")], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "all steps passed (cpu mode)" in (out / "summary.txt").read_text()
    report = json.loads((out / "env.json").read_text())
    assert Path(report["mixmag"]).is_relative_to(site.resolve()) and report["problems"] == []
    embed = json.loads((out / "bench_embed.json").read_text())
    assert embed["tiles"] > 0 and all(rate > 0 for rate in embed["cpu_data_path_tiles_per_s"].values())
    pretrain = json.loads((out / "bench_pretrain.json").read_text())
    assert pretrain["training"][0]["samples_per_s"] > 0 and 0 < pretrain["training"][0]["mfu"]
    profile = pretrain["profile"]
    assert set(profile["phases_ms"]) == {"loader wait", "host->device copy", "forward", "backward", "optimizer"}
    assert profile["attention"], "the profile names the attention kernel that ran"
    assert "host syncs (.item())" in profile["copies"]


def test_gpu_checks_refuses_a_stale_mixmag_wheel(tmp_path):
    """A wheel in .whl that is not this tree's code would bench old code on the device: refused before anything runs."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    import zipfile

    with zipfile.ZipFile(wheels / "mixmag-0.0.1-py3-none-any.whl", "w") as z:
        z.writestr("mixmag/__init__.py", "old = True\n")
        z.writestr("mixmag-0.0.1.dist-info/METADATA", "Metadata-Version: 2.1\nName: mixmag\nVersion: 0.0.1\n")
        z.writestr("mixmag-0.0.1.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr("mixmag-0.0.1.dist-info/RECORD", "")
    env = os.environ | {
        "MIXMAG_CHECKS": "cpu",
        "PYTHON": sys.executable,
        "WHEELS": str(wheels),
        "SITE": str(tmp_path / "site"),
        "OUT": str(tmp_path / "out"),
        "WORK": str(tmp_path / "work"),
    }
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "gpu-checks.sh")], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    assert "not this tree's code" in (tmp_path / "out" / "summary.txt").read_text()


def test_device_versions_satisfy_what_mixmag_declares():
    """The lent H200's Python (3.12.3) and its own torch 2.11, torchvision, numpy... are allowed by pyproject.toml."""
    from packaging.specifiers import SpecifierSet

    assert "3.12.3" in SpecifierSet(PYPROJECT["requires-python"])
    known = {name: version for name, version in DEVICE.items() if version}
    checks = [c for c in check_versions(PYPROJECT["dependencies"], known, DEVICE_PYTHON) if c.installed]
    assert {"torch", "torchvision", "numpy"} <= {normalize(c.name) for c in checks}
    assert [c for c in checks if not c.ok] == []


def test_version_check_names_what_is_missing_or_too_old():
    checks = {
        c.name: c
        for c in check_versions(["torch>=2.4", "timm>=1.0.9", "numpy>=1.26"], {"torch": "2.3.1", "numpy": "2.1"})
    }
    assert not checks["torch"].ok and checks["timm"].installed is None and not checks["timm"].ok and checks["numpy"].ok


def test_device_wheels_close_over_every_requirement():
    """What scripts/device-wheels.sh brings plus what the device has covers mixmag's requirements and theirs."""
    needed = wheels_needed(PYPROJECT["dependencies"], set(DEVICE), DEVICE_PYTHON)
    assert {"pydicom", "shapely", "pydantic", "tiffslide", "openslide-bin"} <= set(needed)
    assert not set(needed) & set(DEVICE), "nothing the device has is brought again (two versions stop the install)"
    from importlib import metadata

    for name in needed:
        for requirement in core_requirements(metadata.requires(name) or [], DEVICE_PYTHON):
            assert normalize(requirement.name) in set(needed) | set(DEVICE), f"{name} needs {requirement.name}"


def test_device_wheels_refuse_a_requirement_not_installed_here():
    with pytest.raises(EnvironmentMismatchError, match="not installed here"):
        wheels_needed(["no-such-package-mixmag>=1"], set(), DEVICE_PYTHON)


def test_every_module_imports_and_optional_extras_are_told_apart(tmp_path, monkeypatch):
    package = tmp_path / "fakepkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "fine.py").write_text("x = 1\n")
    (package / "needs_extra.py").write_text("import slideio_not_installed_here\n")
    (package / "broken.py").write_text("import no_such_core_module_here\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    failed, skipped = import_failures("fakepkg", {"slideio-not-installed-here", "slideio_not_installed_here"})
    assert [f.split()[0] for f in failed] == ["fakepkg.broken"] and [s.split()[0] for s in skipped] == [
        "fakepkg.needs_extra"
    ]


def test_the_version_reported_is_the_copy_that_imports(tmp_path, monkeypatch):
    """A wheel in a target folder on PYTHONPATH shadows the environment's copy: its version is the one checked."""
    for folder, version in (("target", "1.0"), ("site", "2.0")):
        info = tmp_path / folder / f"shadowed_pkg-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: shadowed-pkg\nVersion: {version}\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path / "target"), str(tmp_path / "site")] + sys.path)
    assert installed_versions()["shadowed-pkg"] == "1.0"
