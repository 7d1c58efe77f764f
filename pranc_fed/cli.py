"""`pranc-fed` command line. Each subcommand parses its arguments here and calls one function
elsewhere; bad input of any kind exits with status 2 and a message that says what to do."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .basis import FingerprintMismatch
from .config import ConfigError, ExperimentConfig, load_config
from .data import DatasetError
from .pranc import PrancFileError

USER_ERRORS = (ConfigError, DatasetError, PrancFileError, FingerprintMismatch, FileNotFoundError)


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="experiment YAML, e.g. configs/mnist_lenet.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value (repeatable)")
    parser.add_argument("--out", type=Path, help="output folder (default: the config's out_dir)")


def _load(args: argparse.Namespace) -> tuple[ExperimentConfig, Path]:
    cfg = load_config(args.config, args.overrides)
    return cfg, args.out or Path(cfg.resolved_out_dir())


def cmd_models(args: argparse.Namespace) -> int:
    from .models import describe_models
    print(f"{'name':<14} {'input':<12} {'covered':>10} {'local':>8}  description")
    for m in describe_models():
        shape = "x".join(map(str, m["input_shape"]))
        print(f"{m['name']:<14} {shape:<12} {m['covered']:>10,} {m['local']:>8,}  {m['description']}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .training import train_centralized
    cfg, out = _load(args)
    summary = train_centralized(cfg, out)
    print(f"final test accuracy {summary['final_test_accuracy']:.4f} (best {summary['best_test_accuracy']:.4f}) "
          f"in {summary['wall_seconds']:.0f}s")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from .data import load_dataset
    from .runner import simulate
    cfg, out = _load(args)
    load_dataset(cfg.data.dataset)  # a missing dataset fails here, before any process starts
    return 0 if simulate(args.config, args.overrides, cfg, out) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pranc-fed", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list the model architectures with their parameter counts").set_defaults(
        run=cmd_models)
    p = sub.add_parser("train", help="centralised training of PRANC (alpha) or the dense model")
    _config_args(p)
    p.set_defaults(run=cmd_train)
    p = sub.add_parser("simulate", help="run the config as a Flower simulation")
    _config_args(p)
    p.set_defaults(run=cmd_simulate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except USER_ERRORS as e:
        print(f"pranc-fed: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pranc-fed: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
