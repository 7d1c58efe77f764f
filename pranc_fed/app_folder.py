"""Where the Flower app's files are, however pranc_fed was installed.

`flwr run FOLDER` bundles a folder holding pyproject.toml (its [tool.flwr.app] section), the package
and configs/. A source checkout (or an editable install of one) is such a folder. A wheel installs
only the package, so it carries pyproject.toml and configs/ as package data in pranc_fed/flower_app/:
in the repository those are symlinks to the top-level files, which setuptools follows when it builds
the wheel, so the app's definition and the configs exist once. From an installed package the runner
lays out a private copy of the app folder to submit.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def _is_source_checkout(root: Path) -> bool:
    """The folder above the package is our app folder only when its pyproject declares our ServerApp
    (`pip install --target DIR` may put the package next to some other project's pyproject.toml)."""
    pyproject = root / "pyproject.toml"
    return ((root / "configs").is_dir() and pyproject.is_file()
            and "pranc_fed.server_app:app" in pyproject.read_text(encoding="utf-8"))


SOURCE_CHECKOUT = _is_source_checkout(PACKAGE_DIR.parent)
# pyproject.toml and configs/: the checkout's own, or the copies a wheel ships.
APP_FILES = PACKAGE_DIR.parent if SOURCE_CHECKOUT else PACKAGE_DIR / "flower_app"
CONFIGS_DIR = APP_FILES / "configs"


@functools.cache
def app_folder() -> Path:
    """The folder `flwr run` bundles and Flower's processes run in: the checkout itself, or, for an
    installed package, a temporary folder laid out like the checkout (Flower skips symlinks when it
    builds the FAB, so the files are copied), removed when this process exits."""
    if SOURCE_CHECKOUT:
        return APP_FILES
    parent = Path(tempfile.mkdtemp(prefix="pranc-fed-app-"))
    atexit.register(shutil.rmtree, parent, ignore_errors=True)
    folder = parent / "pranc-fed"  # flwr takes the folder's name as the app's: letters, digits and hyphens
    shutil.copytree(PACKAGE_DIR, folder / "pranc_fed", ignore=shutil.ignore_patterns("__pycache__", "flower_app"))
    shutil.copytree(CONFIGS_DIR, folder / "configs")
    shutil.copy(APP_FILES / "pyproject.toml", folder)
    return folder


def packaged_configs() -> list[str]:
    return sorted(path.stem for path in CONFIGS_DIR.glob("*.yaml"))


def resolve_config(name: str | Path) -> Path:
    """The experiment YAML to load: `name` when that file exists, else the packaged config it names,
    written as `mnist_lenet`, `mnist_lenet.yaml` or `configs/mnist_lenet.yaml` (as in the docs), so an
    installed package runs the shipped configs from any folder."""
    from .config import ConfigError
    path = Path(name)
    if path.is_file():
        return path
    if path.name and path.parent in (Path("."), Path("configs")) and path.suffix in ("", ".yaml"):
        packaged = CONFIGS_DIR / f"{path.stem}.yaml"
        if packaged.is_file():
            return packaged
    raise ConfigError(f"no config file {str(name)!r}, nor a packaged config of that name; "
                      f"the packaged configs are {', '.join(packaged_configs())}")
