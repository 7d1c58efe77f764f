"""What a finished run leaves in its folder: the trained model and summary.json, written the same
way by `pranc-fed train` (centralized.py) and the ServerApp (server_app.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from torch import nn

from . import atomic_write
from .config import ExperimentConfig
from .data import DatasetBundle
from .models import count_parameters, model_args
from .pranc import PrancModel


def parameter_counts(network: nn.Module) -> dict[str, int]:
    """The summary's parameter counts of the plain network a model stands for (models.count_parameters)."""
    covered, local = count_parameters(network)
    return {"param_count": covered + local, "covered_param_count": covered, "local_param_count": local}


def save_results(out: Path, cfg: ExperimentConfig, bundle: DatasetBundle, model: nn.Module,
                 dense_state: dict[str, np.ndarray], summary: dict, **metadata) -> dict:
    """Save the trained model, then write summary.json (summary plus the model file); returns what it holds.
    A PrancModel goes to model.pranc (the seed and alpha, with the build arguments and preprocessing that
    `pranc-fed evaluate` needs; metadata joins the config's name in its header); any other model's
    dense_state goes to model.npz (no pickle)."""
    if isinstance(model, PrancModel):
        model_file = out / "model.pranc"
        model.save(model_file, cfg.pranc.alpha_dtype, model_args(bundle), bundle.preprocessing.to_dict(),
                   {"config": cfg.name} | metadata)
    else:
        model_file = out / "model.npz"
        np.savez(model_file, **dense_state)
    summary = summary | {"model_file": str(model_file), "model_file_bytes": model_file.stat().st_size}
    atomic_write(out / "summary.json", lambda f: f.write(json.dumps(summary, indent=2).encode()))
    return summary
