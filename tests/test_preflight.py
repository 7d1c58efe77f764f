"""Mistakes that used to fail minutes into a run, inside Flower, are refused before any process
starts: exit 2 and one line naming the key and what to do."""

import pytest

from pranc_fed.cli import main


@pytest.mark.parametrize("command", ["simulate", "deploy", "compare", "train"])
@pytest.mark.parametrize("override, message", [
    ("model.arch=lenett", "model.arch: unknown model architecture 'lenett'"),
    ("train.device=cuda:7", "no CUDA device is available"),
    ("model.arch=lenet_cifar", "cannot take the 1x28x28 images"),
    ("model.arch=resnet18", "more than pranc.max_basis_gb=64"),
])
def test_refused_before_any_process_starts(command, override, message, capsys, tmp_path):
    if command == "train" and override == "model.arch=resnet18":
        override = "model.arch=resnet18 train.mode=pranc"
    argv = [command, "configs/mnist_lenet.yaml", "--out", str(tmp_path / "out")]
    argv += [arg for o in override.split() for arg in ("--set", o)]
    if command == "compare":
        argv += ["--set", "methods.compare=[pranc]", "--set", "methods.compare_num_coeffs=[5000]"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_a_dense_method_needs_no_basis_check():
    from pranc_fed.config import load_config
    from pranc_fed.cli import preflight
    preflight(load_config("configs/mnist_lenet.yaml", ["model.arch=resnet18", "federation.method=fedavg"]))


def test_a_supernode_count_that_differs_from_the_config_is_refused_with_the_fix():
    """`flwr run .` starts Flower's default of 2 simulated SuperNodes; the config says 3 clients."""
    from flwr.app import Context, RecordDict
    from pranc_fed import client_app
    context = Context(1, 7, {"partition-id": 0, "num-partitions": 2}, RecordDict(),
                      {"config-file": "configs/mnist_lenet.yaml", "overrides": ""})
    with pytest.raises(ValueError, match="partition 0 of 2 but federation.num_clients is 3.*num-supernodes=3"):
        client_app.node_for(context)


@pytest.mark.parametrize("override, message", [
    ("model.arch=lenett", "model.arch: unknown model architecture 'lenett'"),
    ("model.arch=lenet_cifar", "cannot take the 1x28x28 images"),
])
def test_under_a_bare_flwr_run_the_serverapp_prints_the_one_line_reason(override, message, capsys):
    """`flwr run .` skips the CLI: the ServerApp runs the same checks, and the reason is the first
    line its log stream shows (Flower then adds its traceback and marks the run failed)."""
    from flwr.app import Context, RecordDict
    from pranc_fed.config import ConfigError
    from pranc_fed.server_app import checked_config
    context = Context(1, 0, {}, RecordDict(), {"config-file": "configs/mnist_lenet.yaml", "overrides": override})
    with pytest.raises(ConfigError):
        checked_config(context)
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("[pranc-fed] error: ") and message in out[0], out
