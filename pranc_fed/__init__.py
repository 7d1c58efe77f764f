"""pranc-fed: federated learning that sends PRANC coefficients instead of weights."""

__version__ = "0.1.0"


def cache_root():
    """Where pranc-fed keeps caches (datasets/, basis/): $PRANC_FED_CACHE, else ~/.cache/pranc-fed."""
    import os
    from pathlib import Path
    return Path(os.environ.get("PRANC_FED_CACHE") or Path.home() / ".cache" / "pranc-fed").expanduser()
