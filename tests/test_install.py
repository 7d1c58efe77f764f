"""A regular, non-editable install works away from the source checkout: the wheel carries the configs
and the Flower app's pyproject.toml, and `simulate` submits an app folder built from the installed copy."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pranc_fed.app_folder import CONFIGS_DIR, resolve_config
from pranc_fed.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
MARKER = "[pranc-fed] the ServerApp of the installed copy"


def run(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The wheel of this checkout, installed with `pip install --target` (no network, no dependencies)."""
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "source"  # setuptools builds inside the source folder: a copy keeps the checkout clean
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source)
    for name in ("configs", "pranc_fed"):  # pranc_fed/flower_app's symlinks stay symlinks, as in a checkout
        shutil.copytree(ROOT / name, source / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    built = run(*pip, "wheel", "--no-index", "--no-deps", "--no-build-isolation", "-w", str(tmp / "wheel"),
                str(source), cwd=tmp)
    assert built.returncode == 0, built.stderr
    wheel, = (tmp / "wheel").glob("pranc_fed-*.whl")
    installed = run(*pip, "install", "--no-index", "--no-deps", "--target", str(tmp / "site"), str(wheel), cwd=tmp)
    assert installed.returncode == 0, installed.stderr
    return tmp / "site"


def installed_cli(site: Path, cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m pranc_fed.cli ARGS` importing only the installed copy, run outside the checkout."""
    return run(sys.executable, "-m", "pranc_fed.cli", *args, cwd=cwd, env=os.environ | {"PYTHONPATH": str(site)},
               timeout=timeout)


def test_the_wheel_ships_the_app_definition_and_the_configs(site):
    shipped = site / "pranc_fed" / "flower_app"
    assert (shipped / "pyproject.toml").read_text() == (ROOT / "pyproject.toml").read_text()
    configs = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
    assert sorted(p.name for p in (shipped / "configs").iterdir()) == configs
    assert not (shipped / "pyproject.toml").is_symlink() and not (shipped / "configs").is_symlink()


def test_the_installed_cli_lists_the_models(site, tmp_path):
    models = installed_cli(site, tmp_path, "models")
    assert models.returncode == 0 and "lenet" in models.stdout, models.stderr


def test_a_config_is_a_file_or_the_name_of_a_packaged_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    packaged = CONFIGS_DIR / "mnist_lenet.yaml"
    for name in ("mnist_lenet", "mnist_lenet.yaml", "configs/mnist_lenet.yaml"):
        assert resolve_config(name) == packaged
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "mnist_lenet.yaml").write_text("name: mine\n")
    assert resolve_config("configs/mnist_lenet.yaml") == Path("configs/mnist_lenet.yaml")  # a file wins
    listed = "cifar10_resnet20, mnist_lenet, mnist_lenet_dirichlet, mnist_lenet_long, mnist_lenet_ring"
    for wrong in ("mnist_lenett", "elsewhere/mnist_lenet.yaml", "mnist_lenet.yml", ""):
        message = f"no config file {wrong!r}, nor a packaged config of that name; the packaged configs are {listed}"
        with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
            resolve_config(wrong)


def test_the_installed_package_simulates_from_its_own_files(site, tmp_path):
    # Only the installed copy prints this: the run below shows it, so the FAB Flower ran was built from it.
    with (site / "pranc_fed" / "server_app.py").open("a") as f:
        f.write(f"\nprint({MARKER!r}, flush=True)\n")
    small = ["federation.rounds=1", "federation.num_clients=2", "pranc.num_coeffs=100", "data.train_subset=400",
             "data.test_subset=200", "federation.local_steps=3"]
    out = tmp_path / "run"
    # configs/mnist_lenet.yaml does not exist in tmp_path: it names the packaged config, as the docs write it.
    result = installed_cli(site, tmp_path, "simulate", "configs/mnist_lenet.yaml", *(f"--set={s}" for s in small),
                           "--out", str(out), timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (out / "summary.json").is_file()
    assert MARKER in result.stdout
