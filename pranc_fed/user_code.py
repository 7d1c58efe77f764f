"""Code of the user's own, named by an import path: `model.arch: "my_package.models:make_net"` and
`data.dataset: "my_package.data:load"` (README, "Your own model and data").

An import path is `MODULE:ATTRIBUTE` (dotted names on both sides). The module is imported as
Python would, with the working folder on `sys.path` as for `python -m` (so a module beside the
config is found from the `pranc-fed` command too). The processes a run starts (Flower's
SuperLink, its ServerApp and ClientApps, Ray's actors) run elsewhere, so `export_to_children`
puts the folder each named module was found in on PYTHONPATH, which they inherit.

Nothing here ever imports a path read from a file: `.pranc` files record the import path of
their architecture, and `inference` imports it only when the user says `--trust-code`.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from pathlib import Path
from typing import Any

_NAME = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
IMPORT_PATH = re.compile(rf"({_NAME}):({_NAME})")


class UserCodeError(ValueError):
    """An import path that cannot be imported, or code behind it that does not keep its contract;
    the message names the config key."""


def is_import_path(text: str) -> bool:
    """Whether `text` looks like MODULE:ATTRIBUTE (a folder or a registry name does not)."""
    return IMPORT_PATH.fullmatch(text) is not None


def first_line(error: BaseException) -> str:
    """`Type: first line of the message`, for one-line errors about the user's code."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _working_folder_importable() -> None:
    # `python -m` and `python script.py` put the working folder (or the script's) first on sys.path;
    # a console script like `pranc-fed` does not. Appended, so it never shadows an installed package.
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)


def resolve(path: str, key: str) -> Any:
    """The object MODULE:ATTRIBUTE names; UserCodeError (naming `key`) when it cannot be imported."""
    match = IMPORT_PATH.fullmatch(path)
    if match is None:
        raise UserCodeError(f"{key}: {path!r} is not an import path; write MODULE:ATTRIBUTE, "
                            "e.g. my_package.models:make_net")
    module_name, attribute = match.groups()
    _working_folder_importable()
    try:
        obj = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and (module_name == e.name or module_name.startswith(e.name + ".")):
            raise UserCodeError(f"{key}: no module named {e.name!r} (from {path!r}); run from the folder that "
                                "holds it, add that folder to PYTHONPATH, or pip install your package") from None
        raise UserCodeError(f"{key}: importing {module_name!r} failed: {first_line(e)}") from None
    except Exception as e:  # a syntax error or whatever the module does at import
        raise UserCodeError(f"{key}: importing {module_name!r} failed: {first_line(e)}") from None
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise UserCodeError(f"{key}: module {module_name!r} has no attribute {attribute!r} "
                                f"(from {path!r}); check the name after the colon")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserCodeError(f"{key}: {path!r} is a {type(obj).__name__}, not a function or class to call")
    return obj


def module_root(path: str) -> Path | None:
    """The sys.path folder the module of an (already resolved) import path was found in; None for a
    module without a file (a namespace or built-in module)."""
    module_name = path.partition(":")[0]
    module = sys.modules.get(module_name)
    file = getattr(module, "__file__", None)
    if file is None:
        return None
    root = Path(file).resolve().parent
    levels = module_name.count(".") + (Path(file).name == "__init__.py")
    for _ in range(levels):
        root = root.parent
    return root


def export_to_children(*paths: str) -> None:
    """Put the folder of each import path's module on PYTHONPATH, so that every process started
    from here (SuperLink, ServerApp, SuperNodes, ClientApps; Flower hands it to Ray's actors) imports
    the same code. Folders already on it are not added twice."""
    current = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    for path in paths:
        root = module_root(path) if is_import_path(path) else None
        if root is not None and str(root) not in current:
            current.insert(0, str(root))
    if current:
        os.environ["PYTHONPATH"] = os.pathsep.join(current)
