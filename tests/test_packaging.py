"""The installed package claims one import name, `saga_actors`, and nothing else.

Two of the architecture's folder names (`supervision`, `persistence`) belong to
other popular packages on the index; installing them at the top level would let
one silently overwrite the other. These tests build the real wheel and look.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import saga_actors

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "-w", str(out), str(ROOT)],
        check=True, cwd=out, timeout=180,
    )  # fmt: skip
    (built,) = out.glob("saga_actors-*.whl")
    return built


def test_the_wheel_installs_nothing_at_the_top_level_but_saga_actors(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        declared = set(archive.read(top_level).decode().split())
    tops = {name.split("/")[0] for name in names if ".dist-info/" not in name}
    assert declared == {"saga_actors"}
    assert tops == {"saga_actors"}
    for package in ("actors", "sagas", "persistence", "supervision"):
        assert f"saga_actors/{package}/__init__.py" in names
    assert "saga_actors/py.typed" in names
    assert "saga_actors/persistence/__main__.py" in names
    assert "saga_actors/__main__.py" in names and "saga_actors/cli.py" in names
    with zipfile.ZipFile(wheel) as archive:
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        assert "saga-actors = saga_actors.cli:main" in archive.read(entry_points).decode()


def test_the_installed_wheel_imports_from_outside_the_checkout(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--disable-pip-version-check",
         "--target", str(target), str(wheel)],
        check=True, timeout=120,
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = (
        "import saga_actors, sys;"
        "from saga_actors import OrderSystem, FaultPlan, RetryPolicy, InvalidOrder,"
        " IdempotencyConflict, SystemNotRunning;"
        "print(saga_actors.__file__, saga_actors.__version__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    location, version = result.stdout.split()
    assert Path(location).is_relative_to(target)
    assert version == saga_actors.__version__
    inspector = subprocess.run(
        [sys.executable, "-m", "saga_actors.persistence", "--help"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert inspector.returncode == 0, inspector.stderr
    assert "saga_actors.persistence" in inspector.stdout
    command = subprocess.run(
        [sys.executable, "-m", "saga_actors", "serve", "--help"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert command.returncode == 0, command.stderr
    assert "SAGA_ACTORS_TOKEN" in command.stdout


def test_the_public_api_is_exported_from_the_root() -> None:
    expected = {"OrderSystem", "FaultPlan", "RetryPolicy", "InvalidOrder", "IdempotencyConflict",
                "SystemNotRunning"}  # fmt: skip
    assert expected <= set(saga_actors.__all__)
    for name in saga_actors.__all__:
        assert getattr(saga_actors, name) is not None
    assert saga_actors.__version__ == _pyproject_version()


def _pyproject_version() -> str:
    import tomllib

    with open(ROOT / "pyproject.toml", "rb") as f:
        return str(tomllib.load(f)["project"]["version"])
