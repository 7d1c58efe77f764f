"""Tests of pranc_fed.config: YAML -> typed, validated settings."""

import re
from pathlib import Path

import pytest

from pranc_fed.config import (
    ConfigError,
    ExperimentConfig,
    apply_overrides,
    config_from_dict,
    config_from_run_config,
    config_to_dict,
    flat_overrides,
    load_config,
    validate,
)

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def _error(overrides, cfg=None):
    with pytest.raises(ConfigError) as info:
        apply_overrides(cfg or ExperimentConfig(), overrides)
    return str(info.value)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load_and_round_trip(path):
    cfg = load_config(path)
    assert cfg.name == path.stem
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_expected_configs_are_shipped():
    names = {p.name for p in CONFIGS}
    assert {"mnist_lenet.yaml", "mnist_lenet_long.yaml", "mnist_lenet_dirichlet.yaml", "cifar10_resnet20.yaml"} <= names
    default = load_config(CONFIGS[0].parent / "mnist_lenet.yaml")
    assert (default.data.dataset, default.model.arch, default.pranc.num_coeffs) == ("mnist", "lenet", 5000)
    assert (default.federation.num_clients, default.federation.rounds, default.federation.local_epochs) == (3, 5, 1)
    dirichlet = load_config(CONFIGS[0].parent / "mnist_lenet_dirichlet.yaml")
    assert (dirichlet.data.partition, dirichlet.data.dirichlet_alpha) == ("dirichlet", 0.3)


def test_defaults_and_round_trip():
    cfg = load_config(None)
    assert cfg == ExperimentConfig()
    d = config_to_dict(cfg)
    assert d["federation"]["rounds"] == 3 and d["methods"]["compare_num_coeffs"] == [1000, 5000, 10000]
    assert config_from_dict(d) == cfg
    assert config_to_dict(config_from_dict(d)) == d
    assert validate(cfg) == cfg
    # Lists are copied per instance, not shared between configs.
    other = ExperimentConfig()
    other.methods.compare.append("pranc")
    assert ExperimentConfig().methods.compare == cfg.methods.compare


def test_overrides_of_each_type():
    cfg = load_config(
        None,
        [
            "federation.rounds=7",  # int
            "train.lr=1e-3",  # float in exponent form (YAML 1.1 would read a string)
            "pranc.basis_budget_mb=512",  # int accepted for a float, stored as float
            "federation.client_eval=true",  # bool
            "data.train_subset=100",  # Optional[int]
            "federation.local_steps=null",  # None for an Optional
            "methods.compare=[pranc, topk]",  # list[str]
            "methods.compare_num_coeffs=[10, 20]",  # list[int]
            "data.dataset=/data/my cifar",  # str (path with a space)
            "name=2024",  # str field: digits stay text
            "seed=3",  # top-level key
        ],
    )
    assert cfg.federation.rounds == 7
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)
    assert cfg.pranc.basis_budget_mb == 512.0 and isinstance(cfg.pranc.basis_budget_mb, float)
    assert cfg.federation.client_eval is True
    assert cfg.data.train_subset == 100 and cfg.federation.local_steps is None
    assert cfg.methods.compare == ["pranc", "topk"] and cfg.methods.compare_num_coeffs == [10, 20]
    assert cfg.data.dataset == "/data/my cifar"
    assert cfg.name == "2024" and cfg.seed == 3
    assert cfg.resolved_out_dir() == Path("runs/2024")
    # Later overrides win; the original config is not changed.
    base = ExperimentConfig()
    assert apply_overrides(base, ["federation.rounds=2", "federation.rounds=4"]).federation.rounds == 4
    assert base.federation.rounds == 3


def test_overrides_validated_at_the_end():
    # An intermediate state (num_clients=1 < min_train_clients=2) is fine if the final one is valid.
    cfg = apply_overrides(ExperimentConfig(), ["federation.num_clients=1", "federation.min_train_clients=1"])
    assert (cfg.federation.num_clients, cfg.federation.min_train_clients) == (1, 1)


def test_unknown_keys_suggest_the_closest():
    assert "did you mean 'federation.rounds'" in _error(["federation.round=3"])
    assert "did you mean 'federation'" in _error(["fedration.rounds=3"])
    assert "did you mean 'federation.rounds'" in _error(["train.rounds=3"])  # right key, wrong section
    msg = _error(["pranc.zzz=1"])
    assert "pranc.zzz" in msg and "num_coeffs" in msg  # no close match: lists the known keys
    with pytest.raises(ConfigError, match="did you mean 'pranc.num_coeffs'"):
        config_from_dict({"pranc": {"num_coefs": 10}})


WRONG_TYPES = [
    ("federation.rounds=three", r"federation.rounds: expected int, got 'three'"),
    ("federation.rounds=true", r"federation.rounds: expected int, got True \(bool\)"),
    ("federation.rounds=2.5", r"federation.rounds: expected int, got 2.5"),
    ("train.lr=true", r"train.lr: expected float, got True"),
    ("train.lr=null", r"train.lr: expected float, got None"),
    ("pranc.share_local_params=1", r"pranc.share_local_params: expected bool, got 1"),
    ("data.train_subset=abc", r"data.train_subset: expected int or null, got 'abc'"),
    ("methods.compare=pranc", r"methods.compare: expected list of str, got 'pranc'"),
    ("methods.compare_num_coeffs=[1, x]", r"methods.compare_num_coeffs\[1\]: expected int, got 'x'"),
]
OUT_OF_RANGE = [
    ("federation.rounds=0", r"federation.rounds: 0 .*>= 1"),
    ("federation.fraction_train=0", r"federation.fraction_train: 0.0 .*> 0"),
    ("federation.fraction_train=1.5", r"federation.fraction_train: 1.5 .*<= 1"),
    ("federation.server_momentum=1", r"federation.server_momentum: 1.0 .*< 1"),
    ("federation.min_train_clients=4", r"federation.min_train_clients: 4 .*<= num_clients \(3\)"),
    ("data.val_fraction=0.95", r"data.val_fraction: 0.95 .*<= 0.9"),
    ("data.dirichlet_alpha=0", r"data.dirichlet_alpha: 0.0 .*> 0"),
    ("data.train_subset=0", r"data.train_subset: 0 .*> 0"),
    ("pranc.basis_seed=-1", r"pranc.basis_seed: -1 .*>= 0"),
        (f"pranc.basis_seed={2**64}", r"pranc.basis_seed: 18446744073709551616 .*< 18446744073709551616"),
    ("methods.compare_num_coeffs=[100, 0]", r"methods.compare_num_coeffs\[1\]: 0 .*>= 1"),
    ("model.arch=''", r"model.arch: must be a non-empty string"),
    ("train.lr=.inf", r"train.lr: inf is not a finite number"),
    ("pranc.alpha_lr=.nan", r"pranc.alpha_lr: nan is not a finite number"),
    ("federation.round_timeout=-.inf", r"federation.round_timeout: -inf is not a finite number"),
        (f"train.lr={10**400}", r"train.lr: .* is not a finite number"),
    ("pranc.num_coeffs=1000000000000", r"pranc.num_coeffs: 1000000000000 .*<= 100000000"),
    ("federation.num_clients=10000000", r"federation.num_clients: 10000000 .*<= 1000000"),
    ("federation.aggregation=bulyan", r"federation.aggregation: 'bulyan' is not allowed; choose one of mean, trimmed_mean, median, krum"),
    ("federation.trim_fraction=0.5", r"federation.trim_fraction: 0.5 .*< 0.5"),
]
BAD_CHOICES = [
    ("data.partition=random", r"data.partition: 'random' .*iid, dirichlet, pathological"),
    ("federation.method=fedprox", r"federation.method: 'fedprox' .*pranc, fedavg"),
    ("pranc.alpha_dtype=bfloat16", r"pranc.alpha_dtype: 'bfloat16' .*float32, float16"),
    ("pranc.cache_dtype=int8", r"pranc.cache_dtype: 'int8' .*float32, bfloat16, float16"),
    ("methods.compare=[pranc, sgd]", r"methods.compare\[1\]: 'sgd' .*topk"),
    ("train.device=tpu", r"train.device: 'tpu' .*auto, cpu, cuda or cuda:N"),
    ("train.device=cuda:x", r"train.device: 'cuda:x'"),
]


@pytest.mark.parametrize("override, expected", WRONG_TYPES + OUT_OF_RANGE + BAD_CHOICES)
def test_a_bad_value_is_refused_naming_its_key(override, expected):
    with pytest.raises(ConfigError, match=expected):
        apply_overrides(ExperimentConfig(), [override])


def test_cuda_devices_are_named_by_index():
    assert apply_overrides(ExperimentConfig(), ["train.device=cuda:1"]).train.device == "cuda:1"


def test_malformed_overrides():
    assert "section.key=value" in _error(["federation.rounds"])
    assert "is a section" in _error(["federation=3"])
    assert "not a config section" in _error(["name.x=1"])


@pytest.mark.parametrize("text, expected", [
    (None, "nope.yaml"),
    ("federation:\n  rounds: [1, 2\n", "nope.yaml.*not valid YAML"),
    ("- a\n- b\n", "nope.yaml.*mapping"),
    ("federation:\n  rounds: 1\n  rounds: 2\n", "nope.yaml.*duplicate key 'rounds'"),
    ("federation:\n  rounds: three\n", "nope.yaml: federation.rounds: expected int"),
    ("federation: 3\n", "federation: expected a mapping"),
])
def test_file_errors(text, expected, tmp_path):
    path = tmp_path / "nope.yaml"   # missing when text is None
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError, match=expected):
        load_config(path)


def test_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\nout_dir: out/{name}/r\ntrain:\n  lr: 1e-4\ndata:\n")  # empty section = defaults
    cfg = load_config(path, ["federation.rounds=9"])
    assert cfg.train.lr == 1e-4 and cfg.federation.rounds == 9 and cfg.data == ExperimentConfig().data
    assert cfg.resolved_out_dir() == Path("out/x/r")
    (tmp_path / "empty.yaml").write_text("# nothing\n")
    assert load_config(tmp_path / "empty.yaml") == ExperimentConfig()
    with pytest.raises(ConfigError, match="federation.rounds"):  # validated after overrides
        load_config(path, ["federation.rounds=0"])


def test_flat_overrides_from_flower_run_config(tmp_path):
    run_config = {
        "config-file": "configs/mnist_lenet.yaml",
        "federation.rounds": 5,
        "pranc.num_coeffs": 1000,
        "train.lr": 1e-5,
        "federation.client_eval": True,
        "data.dataset": "/data/cifar 10",
        "name": "42",
        "methods.compare": "[pranc, fedavg]",
    }
    overrides = flat_overrides(run_config)
    assert not any(o.startswith("config-file") for o in overrides)
    assert "federation.rounds=5" in overrides and "federation.client_eval=true" in overrides
    cfg = apply_overrides(ExperimentConfig(), overrides)
    assert (cfg.federation.rounds, cfg.pranc.num_coeffs, cfg.train.lr) == (5, 1000, 1e-5)
    assert cfg.federation.client_eval is True and cfg.data.dataset == "/data/cifar 10"
    assert cfg.name == "42" and cfg.methods.compare == ["pranc", "fedavg"]
    with pytest.raises(ConfigError, match="did you mean 'federation.rounds'"):
        apply_overrides(ExperimentConfig(), flat_overrides({"federation.round": 5}))
    # What a Flower app does: the YAML named by config-file, then the other keys.
    root = CONFIGS[0].parent.parent
    cfg = config_from_run_config({"config-file": "configs/mnist_lenet.yaml", "federation.rounds": 2}, base_dir=root)
    assert cfg.name == "mnist_lenet" and cfg.federation.rounds == 2
    assert config_from_run_config({"pranc.num_coeffs": 10}).pranc.num_coeffs == 10
    # The one declared key `overrides` carries shell-quoted SECTION.KEY=VALUE pairs.
    cfg = config_from_run_config({"overrides": "federation.rounds=4 'data.dataset=/data/cifar 10'"})
    assert cfg.federation.rounds == 4 and cfg.data.dataset == "/data/cifar 10"


ROOT = Path(__file__).resolve().parents[1]
DOCUMENTED = [ROOT / "README.md", ROOT / "pyproject.toml", ROOT / "pranc_fed" / "config.py", *sorted((ROOT / "configs").glob("*.yaml"))]


def documented_run_configs() -> list[str]:
    """Every `--run-config '...'` or `--run-config "..."` written in the docs, configs and pyproject."""
    forms = [m.group(2) for path in DOCUMENTED
             for m in re.finditer(r"--run-config (['\"])(.*?)\1", path.read_text())]
    assert len(forms) >= 5, forms
    return forms


@pytest.mark.parametrize("form", documented_run_configs())
def test_every_documented_run_config_form_is_accepted_by_flower_and_applied(form):
    """What `flwr run . --run-config FORM` does: Flower parses the form and fuses it with the
    app's declared keys (refusing undeclared ones), then the ServerApp builds its config."""
    from flwr.common.config import get_fused_config_from_dir, parse_config_args
    run_config = get_fused_config_from_dir(ROOT, parse_config_args([form]))
    if "/path/to/" in form:  # a placeholder the user replaces: the override must reach data.dataset
        assert "data.dataset=/path/to/cifar10" in flat_overrides(run_config)
        return
    cfg = config_from_run_config(run_config, ROOT)
    base = load_config(ROOT / str(run_config["config-file"]))
    assert cfg != base, f"{form} changed nothing"


def test_flowers_own_keys_map_onto_the_config_and_zero_keeps_the_yaml():
    from flwr.common.config import get_fused_config_from_dir, parse_config_args
    fused = get_fused_config_from_dir(ROOT, parse_config_args(["num-server-rounds=7 fraction-train=0.5 local-epochs=2"]))
    cfg = config_from_run_config(fused, ROOT)
    assert (cfg.federation.rounds, cfg.federation.fraction_train, cfg.federation.local_epochs) == (7, 0.5, 2)
    default = config_from_run_config(get_fused_config_from_dir(ROOT, {}), ROOT)
    assert default == load_config(ROOT / "configs" / "mnist_lenet.yaml")
