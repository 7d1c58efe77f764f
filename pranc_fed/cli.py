"""`pranc-fed` command line. Each subcommand parses its arguments here and calls one function
elsewhere; bad input of any kind exits with status 2 and a message that says what to do, and a
config is checked (preflight) before any process starts."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from .app_folder import resolve_config
from .basis import FingerprintMismatch, covered_segments, make_blocks
from .config import ConfigError, ExperimentConfig, load_config
from .data import DatasetError, load_configured
from .models import MODELS, build_model, covered_parameter_names, describe_models, model_args
from .pranc import PrancFileError
from .training import resolve_device
from .user_code import UserCodeError, export_to_children, first_line, is_import_path

USER_ERRORS = (ConfigError, DatasetError, PrancFileError, FingerprintMismatch, FileNotFoundError, UserCodeError)


def _config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="experiment YAML (e.g. configs/mnist_lenet.yaml) or the name of a packaged "
                        "config (e.g. mnist_lenet)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value (repeatable)")
    parser.add_argument("--out", type=Path, help="output folder (default: the config's out_dir)")


def _load(args: argparse.Namespace) -> tuple[ExperimentConfig, Path]:
    if getattr(args, "resume", None) is not None:
        if args.out is not None and args.out != args.resume:
            raise ConfigError("--resume DIR continues the run in DIR: leave out --out, or give it the same folder")
        args.out, args.overrides = args.resume, [*args.overrides, "federation.resume=true"]
    args.config = resolve_config(args.config)
    cfg = load_config(args.config, args.overrides)
    return cfg, args.out or Path(cfg.resolved_out_dir())


def _check_resume(cfg: ExperimentConfig, out: Path) -> None:
    """Before any process starts: a folder to resume must hold a run of this config."""
    if cfg.federation.resume:
        from .server_app import check_resume
        check_resume(cfg, out)


def check_privacy(cfg: ExperimentConfig) -> None:
    """privacy's accountant is installed and privacy.epsilon is reachable (one-line ConfigError if not)."""
    if not cfg.privacy.enabled:
        return
    from .privacy import Privacy
    try:
        Privacy(cfg)
    except ImportError:
        raise ConfigError("privacy needs Opacus's RDP accountant: pip install 'pranc-fed[privacy]' "
                          "(or pip install opacus)") from None
    except ValueError as e:
        raise ConfigError(f"privacy.epsilon {cfg.privacy.epsilon:g} at delta {cfg.privacy.delta:g} over "
                          f"{cfg.federation.rounds} rounds cannot be reached ({e}): raise privacy.epsilon or "
                          "privacy.delta, or run fewer rounds") from None


def preflight(cfg: ExperimentConfig, centralised: bool = False) -> None:
    """What would otherwise fail inside a run, minutes later and only in its log, checked before any
    process starts: the trackers of logging.report_to, the dataset, the device, the architecture and its
    input shape, and the size of the basis (of train.mode when centralised, else of federation.method).
    Each failure is a one-line ConfigError (DatasetError for the data). Import paths of the user's own
    model or data (user_code.py) are imported here, and their folders put on PYTHONPATH for the
    processes the run starts."""
    from .loggers import check_installed
    from .topology import TopologyError, build_graph, is_gossip
    check_installed(cfg)
    check_privacy(cfg)
    fed = cfg.federation
    if is_gossip(fed.topology):
        try:
            build_graph(fed.topology, fed.num_clients, fed.degree, cfg.seed)
        except TopologyError as e:
            raise ConfigError(f"federation.topology: {e}") from None
    bundle = load_configured(cfg.data)
    try:
        resolve_device(cfg.train.device)
    except RuntimeError as e:
        raise ConfigError(str(e)) from None
    pranc = (cfg.train.mode if centralised else cfg.federation.method) == "pranc"
    if is_import_path(cfg.model.arch):
        module = _check_user_model(cfg.model.arch, bundle, pranc)
    else:
        module = _check_registered_model(cfg, bundle)
    if pranc:
        p = cfg.pranc
        try:
            values = sum((b.row1 - b.row0) * (b.col1 - b.col0)
                         for b in make_blocks(covered_segments(module), p.num_coeffs, p.basis_layout))
        except ValueError as e:
            raise ConfigError(f"pranc: {e}") from None
        gib = values * 4 / 2**30
        if gib > p.max_basis_gb:
            raise ConfigError(f"the basis of {cfg.model.arch} at K={p.num_coeffs} ({p.basis_layout}) holds {values:,} values "
                              f"({gib:,.1f} GiB in float32), more than pranc.max_basis_gb={p.max_basis_gb:g}: every "
                              "step would stream it; use pranc.layout=per_layer, a smaller pranc.num_coeffs, or raise "
                              "the limit (pranc.cache=disk keeps one copy on disk)")
    export_to_children(cfg.model.arch, cfg.data.dataset)


def _check_user_model(path: str, bundle, pranc: bool) -> torch.nn.Module:
    """The user's factory builds a module (on the CPU: its code may not know the meta device) that
    PRANC can cover and that maps two of the dataset's inputs to [2, num_classes] logits."""
    try:
        module = build_model(path, **model_args(bundle))
    except UserCodeError as e:
        raise ConfigError(str(e)) from None
    if pranc and not covered_parameter_names(module):
        raise ConfigError(f"model.arch: {path} builds a {type(module).__name__} without nn.Conv*/nn.Linear layers, "
                          "whose weights are all that PRANC's basis covers; give the model such layers, or use "
                          "federation.method=fedavg")
    x = bundle.train.preprocessing.normalize(bundle.train.images[:2])
    shape = "x".join(map(str, x.shape[1:]))
    try:
        with torch.no_grad():
            logits = module.eval()(x)
    except Exception as e:
        raise ConfigError(f"model.arch: {path} cannot take the {shape} inputs of data.dataset "
                          f"{bundle.source!r} ({first_line(e)}); build it for this input") from None
    expected = (len(x), bundle.num_classes)
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != expected:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ConfigError(f"model.arch: {path} maps a batch of {len(x)} {shape} inputs to {got}, not to logits of "
                          f"shape {expected} ({bundle.num_classes} classes in data.dataset)")
    return module


def _check_registered_model(cfg: ExperimentConfig, bundle) -> torch.nn.Module:
    try:
        with torch.device("meta"):
            module = build_model(cfg.model.arch, **model_args(bundle))
    except ValueError as e:
        raise ConfigError(f"model.arch: {e}") from None
    shape = bundle.preprocessing.input_shape
    try:
        with torch.device("meta"):
            module(torch.empty(2, *shape))
    except RuntimeError as e:
        _, h, w = MODELS[cfg.model.arch.lower()].input_shape
        raise ConfigError(f"model.arch {cfg.model.arch!r} cannot take the {'x'.join(map(str, shape))} images of "
                          f"{cfg.data.dataset!r} ({str(e).splitlines()[0]}); it is built for {h}x{w}: set "
                          f"data.image_size=[{h}, {w}] to resize them, or pick an architecture for this input "
                          "(`pranc-fed models` lists them)") from None
    return module


def cmd_models(args: argparse.Namespace) -> int:
    print(f"{'name':<14} {'input':<12} {'covered':>10} {'local':>8}  description")
    for m in describe_models():
        shape = "x".join(map(str, m["input_shape"]))
        print(f"{m['name']:<14} {shape:<12} {m['covered']:>10,} {m['local']:>8,}  {m['description']}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .centralized import train_centralized
    cfg, out = _load(args)
    preflight(cfg, centralised=True)
    summary = train_centralized(cfg, out)
    print(f"final test accuracy {summary['final_test_accuracy']:.4f} (best {summary['best_test_accuracy']:.4f}) "
          f"in {summary['wall_seconds']:.0f}s")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from .runner import simulate
    if args.ray_address:
        args.overrides = [*args.overrides, f"federation.ray_address={args.ray_address}"]
    cfg, out = _load(args)
    preflight(cfg)
    _check_resume(cfg, out)
    return 0 if simulate(args.config, _absolute_graph_file(cfg, args.overrides), cfg, out) else 1


def _absolute_graph_file(cfg: ExperimentConfig, overrides: list[str]) -> list[str]:
    """A graph FILE relative to this folder, made absolute: the ServerApp runs elsewhere (server_app.output_dir)."""
    topology = cfg.federation.topology
    if Path(topology).is_file() and not Path(topology).is_absolute():
        return [*overrides, f"federation.topology={Path(topology).resolve()}"]
    return overrides


def cmd_deploy(args: argparse.Namespace) -> int:
    from .deploy import deploy
    if args.nodes is not None:  # N SuperNodes hold partitions 0..N-1: the config's clients follow
        args.overrides = [*args.overrides, f"federation.num_clients={args.nodes}"]
    cfg, out = _load(args)
    preflight(cfg)
    _check_resume(cfg, out)
    if args.certs and not (args.tls or args.auth):
        raise ConfigError("--certs is only used with --tls or --auth")
    nodes = args.nodes or cfg.federation.num_clients
    try:
        return 0 if deploy(args.config, _absolute_graph_file(cfg, args.overrides), cfg, out, nodes, tls=args.tls, auth=args.auth,
                           certs=args.certs) else 1
    except RuntimeError as e:  # a process that did not start or connect; its log says why
        print(f"pranc-fed: error: {e}", file=sys.stderr)
        return 1


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare, plan
    if args.seeds:
        args.overrides = [*args.overrides, f"methods.seeds=[{', '.join(map(str, args.seeds))}]"]
    _, out = _load(args)
    planned = plan(args.config, args.overrides)
    for run in planned:
        preflight(run.cfg)
    return 0 if compare(args.config, args.overrides, out, planned=planned) else 1


def cmd_plot(args: argparse.Namespace) -> int:
    from .compare import plot, rows_of_folders
    rows = rows_of_folders(args.runs)
    if not any(r["test_accuracy"] is not None for r in rows):
        raise FileNotFoundError(f"no test accuracy in {', '.join(map(str, args.runs))}: nothing to plot")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot(rows, args.target, args.out, by_round=True)
    print(f"wrote {args.out}")
    return 0


def _progress_printer(label: str):
    """progress(done, total) on stderr: one updating line on a terminal, else a line every ~10%."""
    import time
    tty, state = sys.stderr.isatty(), {"shown": -1, "start": time.perf_counter()}

    def progress(done: int, total: int) -> None:
        tenth = done * 10 // max(total, 1)
        if not tty and tenth == state["shown"] and done < total:
            return
        state["shown"] = tenth
        line = f"{label}: {done:,}/{total:,} images ({done / max(total, 1):.0%}, {time.perf_counter() - state['start']:.1f}s)"
        if tty:
            print("\r" + line, end="\n" if done >= total else "", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)
    return progress


def _inference_device(name: str):
    """The torch device for --device, or None after printing why it is not available."""
    try:
        return resolve_device(name)
    except RuntimeError as e:  # e.g. cuda requested without a GPU
        print(f"pranc-fed: error: {str(e).replace('train.device', '--device')}", file=sys.stderr)
        return None


def cmd_inspect(args: argparse.Namespace) -> int:
    import json
    from .inference import format_inspection, inspect_model
    info = inspect_model(args.model, trust_code=args.trust_code)
    print(json.dumps(info, indent=2) if args.json else format_inspection(info))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json
    from .inference import evaluate_file
    mode = "on the fly" if args.on_the_fly else "full reconstruction"
    device = _inference_device(args.device)
    if device is None:
        return 2
    result = evaluate_file(args.model, args.data, args.split, args.on_the_fly, args.batch_size, args.subset,
                           args.seed, device,
                           None if args.quiet else _progress_printer(f"evaluating ({mode})"), trust_code=args.trust_code)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"accuracy {result['accuracy']:.4f}  loss {result['loss']:.4f}  on {result['examples']:,} "
              f"{args.split} images of {result['data']} ({mode}; load {result['load_seconds']:.1f}s, "
              f"eval {result['eval_seconds']:.1f}s)")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import json
    from .inference import predict_file
    device = _inference_device(args.device)
    if device is None:
        return 2
    preds = predict_file(args.model, args.images, args.top_k, args.on_the_fly, args.batch_size, device,
                         trust_code=args.trust_code)
    if args.json:
        print(json.dumps([p.to_dict() for p in preds], indent=2))
    else:
        for p in preds:
            print(f"{p.path}  " + "  ".join(f"{name} ({prob:.3f})" for name, _, prob in p.top))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Basis engine benchmark, or with --accuracy the cache dtypes' accuracy (bench.py's docstring)."""
    from . import bench
    if args.accuracy:
        bench.precision_accuracy(args.out, resolve_config(args.accuracy), args.overrides, args.dtypes.split(","))
        return 0
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in bench.SETTINGS]
    if unknown:
        raise ConfigError(f"--models: unknown model(s) {', '.join(unknown)}; choose from {', '.join(bench.SETTINGS)}")
    bench.run(args.out, models, args.repeats, args.max_gb, [v.strip() for v in args.variants.split(",")]
              if args.variants else None)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pranc-fed", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list the model architectures with their parameter counts").set_defaults(
        run=cmd_models)
    p = sub.add_parser("train", help="centralised training of PRANC (alpha) or the dense model")
    _config_args(p)
    p.set_defaults(run=cmd_train)
    resume_help = "continue the killed run in DIR after its last complete round (same config and overrides)"
    p = sub.add_parser("simulate", help="run the config as a Flower simulation")
    _config_args(p)
    p.add_argument("--resume", type=Path, metavar="DIR", help=resume_help)
    p.add_argument("--ray-address", metavar="HOST:PORT", help="run on this existing Ray cluster (`ray start --head` "
                   "prints it); the same as --set federation.ray_address=HOST:PORT")
    p.set_defaults(run=cmd_simulate)
    p = sub.add_parser("deploy", help="run the config on a local SuperLink and SuperNodes (real processes)")
    _config_args(p)
    p.add_argument("--resume", type=Path, metavar="DIR", help=resume_help)
    p.add_argument("--nodes", type=int, help="number of SuperNodes (default: federation.num_clients)")
    p.add_argument("--tls", action="store_true", help="TLS between SuperLink, SuperNodes and flwr (makes a CA "
                   "and a certificate for 127.0.0.1 unless --certs names a folder with ca.crt, server.pem, server.key)")
    p.add_argument("--auth", action="store_true", help="SuperNode authentication: per-node ECDSA keys registered "
                   "with `flwr supernode register` (implies --tls)")
    p.add_argument("--certs", type=Path, help="folder with ca.crt, server.pem and server.key to use for --tls")
    p.set_defaults(run=cmd_deploy)
    p = sub.add_parser("compare", help="run every method of methods.compare on one harness and compare "
                                       "accuracy against bytes (resumable)")
    _config_args(p)
    p.add_argument("--seeds", type=int, nargs="+", metavar="N", help="run every method once per seed (partitions, "
                   "init, sampling and basis follow it); the same as --set 'methods.seeds=[N, ...]'")
    p.set_defaults(run=cmd_compare)
    p = sub.add_parser("plot", help="draw test accuracy against rounds and against bytes for run folders side by side")
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR",
                   help="folders written by simulate or deploy (rounds.csv) or by compare (comparison.csv)")
    p.add_argument("--out", type=Path, default=Path("accuracy.png"), help="the PNG to write (default accuracy.png)")
    p.add_argument("--target", type=float, action="append", default=[], metavar="ACCURACY",
                   help="draw a target accuracy line (repeatable), e.g. 0.97")
    p.set_defaults(run=cmd_plot)
    # --- inference on a .pranc file (pranc_fed/inference.py)
    trust_help = ("import and run the code a file names as its architecture (a model of your own, "
                  "MODULE:ATTRIBUTE); only for files you trust")
    p = sub.add_parser("inspect", help="show what a .pranc model file holds and verify it")
    p.add_argument("model", help="a .pranc file")
    p.add_argument("--trust-code", action="store_true", help=trust_help + "; without it the import path is shown, "
                   "not imported")
    p.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    p.set_defaults(run=cmd_inspect)
    otf_help = ("generate each layer's weights from the seed just before it runs and drop them after "
                "(memory-light; regenerates the weights for every batch, so it is slower)")
    p = sub.add_parser("evaluate", help="accuracy and loss of a .pranc model on a dataset")
    p.add_argument("model", help="a .pranc file")
    p.add_argument("--data", required=True, metavar="NAME_OR_PATH",
                   help="'mnist', a torchvision-layout root, an ImageFolder tree, or MODULE:ATTRIBUTE of your own loader")
    p.add_argument("--trust-code", action="store_true", help=trust_help)
    p.add_argument("--split", choices=("test", "train"), default="test")
    p.add_argument("--on-the-fly", action="store_true", help=otf_help)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--subset", type=int, metavar="N", help="evaluate on N examples drawn like data.test_subset")
    p.add_argument("--seed", type=int, default=0, help="seed of --subset (default 0)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(run=cmd_evaluate)
    p = sub.add_parser("predict", help="top-k class predictions of a .pranc model for image files")
    p.add_argument("model", help="a .pranc file")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER", help="PNG/JPEG files or folders of them")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--trust-code", action="store_true", help=trust_help)
    p.add_argument("--on-the-fly", action="store_true", help=otf_help)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    p.add_argument("--json", action="store_true", help="print the predictions as JSON")
    p.set_defaults(run=cmd_predict)
    p = sub.add_parser("bench", help="benchmark the basis engine (generation, expand/project, training step, "
                                     "memory) against the official materialised-fp32 approach")
    p.add_argument("--out", type=Path, default=Path("runs/bench"), help="folder for bench.json and bench.txt")
    p.add_argument("--models", default="lenet,resnet20,resnet56", help="comma-separated subset of the default")
    p.add_argument("--variants", help="comma-separated subset of official,fp32,fp16,bf16,per_layer,disk,none")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds per measurement (default 3)")
    p.add_argument("--max-gb", type=float, help="largest basis to hold in memory (default 60%% of MemAvailable)")
    p.add_argument("--accuracy", metavar="CONFIG", help="instead of timings: train CONFIG once per --dtypes and "
                   "report the accuracy effect of a low-precision cached basis")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="config override for --accuracy (repeatable)")
    p.add_argument("--dtypes", default="float32,float16,bfloat16", help="cache dtypes for --accuracy")
    p.set_defaults(run=cmd_bench)
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
    except BrokenPipeError:  # `pranc-fed predict --json | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
