"""pranc-fed: federated learning that sends PRANC coefficients instead of weights."""

import glob
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__version__ = "0.1.0"


def cache_root() -> Path:
    """Where pranc-fed keeps caches (datasets/, basis/): $PRANC_FED_CACHE, else ~/.cache/pranc-fed."""
    return Path(os.environ.get("PRANC_FED_CACHE") or Path.home() / ".cache" / "pranc-fed").expanduser()


def quoted(value: object, head: int = 120, tail: int = 380) -> str:
    """A value from outside (a client's reply, a file's header) for a message or a log: repr-escaped
    (no raw newlines or control characters to forge log lines with), and cut to its start and its
    end (where a traceback says what went wrong) when longer than head + tail characters."""
    text = repr(value)
    if len(text) <= head + tail:
        return text
    return f"{text[:head]} ...[{len(text) - head - tail} characters]... {text[len(text) - tail:]}"


def atomic_write(path: Path, write: Callable[[BinaryIO], None], mode: int = 0o644) -> None:
    """Write through a private temporary file in the same folder, then rename it over path: a reader,
    a process racing to write the same file, or a run killed halfway sees the old file or the new one,
    never a part. The file gets `mode`, readable by all by default (mkstemp makes 0600), as results
    and shared caches must be. A killed run leaves its temporary file (temporary_files(path) finds it)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def temporary_files(path: Path) -> list[Path]:
    """The temporary files of atomic_write(path) calls that are running or were killed."""
    return list(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))
