"""One experiment config (YAML) -> typed, validated settings.

A config is one YAML file whose top-level keys are the fields of `ExperimentConfig`
(`name`, `seed`, `out_dir`) and its sections (`data`, `model`, `pranc`, `train`,
`federation`, `methods`, `privacy`, `logging`). Missing keys take the defaults below. Only two things
override a file: `--set section.key=value` on the CLI and Flower's run config
(`flwr run . --run-config 'overrides="federation.rounds=5 pranc.num_coeffs=1000"'`, or
Flower's own `num-server-rounds=5`; see `flat_overrides`). Override values are parsed as YAML, so `true`, `3`, `1e-3`,
`null` and `[1, 2]` mean what they say.

Types are checked from the dataclass type hints (bool is not an int, an int is
accepted for a float, `null` only where the hint is Optional). Value rules live in
each field's metadata: `gt`/`ge`/`lt`/`le` (a number, or the name of a sibling
field), `choices`, `pattern` (regex, description); for list fields they apply to
every element. Every string must be non-empty. Anything wrong raises `ConfigError` naming the dotted key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import operator
import re
import shlex
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from .codecs import CODECS, ROUNDINGS
from .aggregation import AGGREGATIONS, NORM_BOUNDS, SERVER_OPTIMIZERS, WEIGHTINGS
from .basis import CACHE_DTYPES, CACHES, LAYOUTS, layout_name
from .data import DEFAULT_TEST_FRACTION, PARTITION_SCHEMES
from .pranc import ALPHA_DTYPES, MAX_NUM_COEFFS
from .privacy import MODES as PRIVACY_MODES
from .topology import MIXINGS, STAR, TOPOLOGIES, is_gossip

CONFIG_FILE_KEY = "config-file"  # Flower run-config key naming the YAML file
OVERRIDES_KEY = "overrides"  # Flower run-config key holding the shell-quoted overrides of that file
# Flower's own run-config keys (its quickstart apps') that mean what a config key means; declared in
# pyproject.toml with 0, which leaves the YAML's value.
FLOWER_KEYS = {"num-server-rounds": "federation.rounds", "fraction-train": "federation.fraction_train",
               "local-epochs": "federation.local_epochs"}


def method_names() -> tuple[str, ...]:
    """The registered methods (pranc_fed.methods.METHODS), read when a config is checked: the
    registry imports this module, so it cannot be imported here."""
    from .methods import METHODS
    return tuple(METHODS)


class ConfigError(ValueError):
    """A config file, key or value that cannot be used; the message says which and why."""


def _f(default: Any, **rules: Any) -> Any:
    """A dataclass field with a default (lists are copied; a function gives the list) and validation
    rules (`choices` may be a function that returns them)."""
    if callable(default):
        return field(default_factory=lambda: list(default()), metadata=rules)
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=rules)
    return field(default=default, metadata=rules)


@dataclass
class DataConfig:
    dataset: str = _f("mnist")  # "mnist" (embedded, offline); a folder: ImageFolder tree (train/, test/), class folders <class>/*.jpg, save_to_disk'd Hugging Face dataset or torchvision root; "hf:NAME" from the local Hugging Face cache; or MODULE:ATTRIBUTE of your own load() -> (train, test) torch Datasets (data.load_user_dataset)
    image_size: list[int] | None = _f(None, ge=1)  # [height, width] every image is resized to when decoded (null = the files' own size); model.arch must take it
    test_fraction: float = _f(DEFAULT_TEST_FRACTION, gt=0, lt=1)  # share of each class held out as the test set when the data has no test split
    split_seed: int = _f(0, ge=0)  # seed of that split; apart from `seed` so that every run tests on the same images
    image_column: str | None = _f(None)  # Hugging Face image column (null = image or img)
    label_column: str | None = _f(None)  # Hugging Face label column (null = label, labels or fine_label)
    partition: str = _f("iid", choices=PARTITION_SCHEMES)  # how training data is split over clients
    dirichlet_alpha: float = _f(0.5, gt=0)  # label skew of `dirichlet`: smaller = more non-IID
    classes_per_client: int = _f(2, ge=1)  # labels each client holds under `pathological`
    val_fraction: float = _f(0.1, ge=0, le=0.9)  # share of each client's data held out for validation
    train_subset: int | None = _f(None, gt=0)  # cap on training examples, for small test runs
    test_subset: int | None = _f(None, gt=0)  # cap on central test examples, for small test runs
    server_val_size: int = _f(0, ge=0)  # training examples the server holds out to score choices (lr search), never the test set


@dataclass
class ModelConfig:
    arch: str = _f("lenet")  # name in the pranc_fed.models registry, or MODULE:ATTRIBUTE of your own factory(num_classes, in_channels) or nn.Module class (README "Your own model and data")


@dataclass
class PrancConfig:
    num_coeffs: int = _f(5000, ge=1, le=MAX_NUM_COEFFS)  # K: basis size = number of alpha coefficients sent
    basis_seed: int = _f(0, ge=0, lt=2**64)  # shared seed that regenerates the basis everywhere
    layout: str = _f("global", choices=LAYOUTS)  # one basis for all weights, or one per layer (cheaper)
    full_rank_upto: int = _f(0, ge=0, le=2**31)  # per_layer: layers of at most this many weights get one coefficient per weight (full rank); the rest share K by size (0 = none)
    alpha_dtype: str = _f("float32", choices=ALPHA_DTYPES)  # dtype of alpha in .pranc model files
    uplink_codec: str = _f("float32", choices=tuple(CODECS))  # how a client's change of alpha travels (codecs.py)
    downlink_codec: str = _f("float32", choices=tuple(CODECS))  # how the server's alpha travels (codecs.py)
    codec_block: int = _f(256, ge=1, le=2**20)  # values per scale of the int8/int4/nf4/int2 codecs
    codec_rounding: str = _f("nearest", choices=ROUNDINGS)  # nearest, or stochastic (unbiased) rounding
    error_feedback: bool = _f(True)  # what rounding lost is added to the next message (client up, server down)
    reseed_period: int = _f(0, ge=0)  # rounds per basis; each period's alpha is folded into theta0 (0 = one fixed basis)
    basis_budget_mb: float = _f(2048.0, gt=0, le=2**30)  # memory the basis may use before streaming in chunks
    max_basis_gb: float = _f(64.0, gt=0, le=2**20)  # a run whose basis (d x K float32 values) is larger is refused up front
    cache: str = _f("auto", choices=CACHES)  # where a materialised basis is kept
    cache_dtype: str = _f("float32", choices=tuple(CACHE_DTYPES))  # cached basis precision; half the bytes
    share_local_params: bool = _f(True)  # send norm-layer params/stats; False keeps them on the client (FedBN)
    alpha_lr: float = _f(0.002, gt=0)  # Adam learning rate of alpha

    def __post_init__(self) -> None:
        if self.full_rank_upto and self.layout != "per_layer":
            raise ConfigError("pranc.full_rank_upto gives small layers their own full-rank block: it needs "
                              "pranc.layout=per_layer")

    @property
    def basis_layout(self) -> str:
        """The layout the basis is built with (and its fingerprint and files name)."""
        return layout_name(self.layout, self.full_rank_upto)


@dataclass
class TrainConfig:
    mode: str = _f("pranc", choices=("pranc", "dense"))  # centralised training (`pranc-fed train`) only
    epochs: int = _f(10, ge=1, le=10**5)  # centralised training epochs
    batch_size: int = _f(128, ge=1, le=10**6)  # mini-batch size, centralised and on clients
    lr: float = _f(0.001, gt=0)  # Adam lr of dense weights and of PRANC local params
    weight_decay: float = _f(0.0, ge=0)  # Adam weight decay
    device: str = _f("auto", pattern=(r"auto|cpu|cuda(:\d+)?", "auto, cpu, cuda or cuda:N"))  # auto = cuda if present


@dataclass
class FederationConfig:
    method: str = _f("pranc", choices=method_names)  # what clients train and send
    num_clients: int = _f(3, ge=1, le=10**6)  # number of data partitions / simulated clients
    rounds: int = _f(3, ge=1, le=10**6)  # federated rounds
    fraction_train: float = _f(1.0, gt=0, le=1)  # share of clients sampled per round
    min_train_clients: int = _f(2, ge=1, le="num_clients")  # min sampled clients, and min replies to aggregate
    local_epochs: int = _f(1, ge=1, le=10**4)  # client epochs per round
    keep_client_optimizer: bool = _f(False)  # clients keep their Adam moments between rounds (free on the wire)
    local_steps: int | None = _f(None, gt=0)  # if set, cap on client optimiser steps per round
    server_optimizer: str = _f("avg", choices=SERVER_OPTIMIZERS)  # how the server applies the mean update
    server_lr: float = _f(1.0, gt=0)  # server step size on the mean update
    server_momentum: float = _f(0.9, ge=0, lt=1)  # momentum of avgm (beta1 of adam)
    client_eval: bool = _f(False)  # client-side evaluation rounds; they cost bytes, so off by default
    num_cpus_per_client: float = _f(1.0, gt=0)  # Flower simulation client resources
    num_gpus_per_client: float = _f(0.0, ge=0)  # Flower simulation client resources (fractions share a GPU)
    ray_address: str | None = _f(None, pattern=(r"auto|[\w.\-\[\]:]+:\d+", "HOST:PORT of a running Ray head, or auto"))  # simulations attach to this Ray cluster (null = start a private one; CLI: --ray-address)
    round_timeout: float = _f(600.0, gt=0, le=10**7)  # seconds the server waits for a round's replies
    resume: bool = _f(False)  # continue from the checkpoint in out_dir after its last complete round (CLI: --resume DIR)
    min_aggregated_share: float = _f(0.5, ge=0, le=1)  # a run that aggregates fewer of its rounds fails (non-zero exit)
    max_num_examples: int = _f(10_000_000, ge=1, le=2**53)  # replies claiming more examples are dropped
    # Robust aggregation (aggregation.py): what a minority of clients can do to the global model.
    client_weighting: str = _f("examples", choices=WEIGHTINGS)  # examples (FedAvg) | capped | equal
    weight_cap: float = _f(2.0, ge=1)  # capped: a reply weighs at most this x the round's median claimed num-examples
    norm_bound: str = _f("none", choices=NORM_BOUNDS)  # clip or drop updates longer than norm_factor x the median
    norm_factor: float = _f(3.0, ge=1)  # the bound, in multiples of the round's median update norm
    aggregation: str = _f("mean", choices=AGGREGATIONS)  # mean | trimmed_mean | median (per coordinate) | krum
    trim_fraction: float = _f(0.2, ge=0, lt=0.5)  # trimmed_mean: share cut from each end (floor(trim x replies))
    krum_byzantine: int = _f(1, ge=0, le=10**6)  # krum: f, the attackers it assumes (scores use the n - f - 2 nearest)
    krum_select: int = _f(1, ge=1, le=10**6)  # krum: replies averaged (1 = Krum, more = Multi-Krum)
    # Decentralised learning (pranc_fed/gossip.py): with a topology other than star no node averages for
    # everyone; each agent trains, sends its coded state to its graph neighbours and mixes what it receives.
    # The server only relays messages (it sees them); edges.csv counts the bytes per edge as if peer-to-peer.
    # The robust rules above then apply to each agent's mix of its neighbours (norm_bound clip: clipped
    # gossip; aggregation median: neighbour median); server_optimizer, resume and client_eval do not apply.
    topology: str = _f(STAR)  # star (server averages) | ring | torus | random_regular | complete | FILE: an edge list "i j" per line or a 0/1 adjacency matrix (topology.py)
    degree: int = _f(4, ge=1, le=10**6)  # random_regular: neighbours per agent
    gossip_steps: int = _f(1, ge=1, le=1000)  # exchanges with the neighbours per round (local training once per round)
    mixing: str = _f("metropolis", choices=MIXINGS)  # mixing weights: metropolis (Metropolis-Hastings) | max_degree

    def __post_init__(self) -> None:
        if self.method == "fedpm" and (self.aggregation != "mean" or self.norm_bound != "none"):
            raise ConfigError("federation.aggregation and federation.norm_bound apply to methods that average "
                              "updates; fedpm counts sampled masks: set aggregation=mean and norm_bound=none")
        if self.topology not in TOPOLOGIES and not ("/" in self.topology or Path(self.topology).suffix):
            raise ConfigError(f"federation.topology: {self.topology!r} is not allowed; choose one of "
                              f"{', '.join(TOPOLOGIES)}, or give a graph file (a path, e.g. graphs/ring10.txt)")


@dataclass
class MethodsConfig:
    topk_density: float = _f(0.01, gt=0, le=1)  # share of delta entries topk sends
    qsgd_levels: int = _f(16, ge=1)  # quantisation levels s of qsgd
    error_feedback: bool = _f(True)  # topk/signsgd carry their compression error to the next round
    downlink_dtype: str = _f("float32", choices=("float32", "float16"))  # what topk/qsgd/signsgd/fedpm broadcast
    fedpm_lr: float = _f(0.1, gt=0)  # Adam lr of fedpm's mask scores
    fedpm_reset_period: int = _f(5, ge=1)  # rounds between resets of fedpm's Beta posterior (1 = plain mean of masks)
    compare: list[str] = _f(method_names, choices=method_names)  # methods run by `pranc-fed compare`
    compare_num_coeffs: list[int] = _f([1000, 5000, 10000], ge=1)  # K values pranc is compared at
    compare_codecs: list[str] = _f(["float32"], pattern=(rf"({'|'.join(CODECS)})(/({'|'.join(CODECS)}))?",
                                                         "a codec, or UPLINK/DOWNLINK codecs such as int4/int8"))  # pranc runs once per K per entry
    compare_reseed_periods: list[int] = _f([0], ge=0)  # and once per pranc.reseed_period of this list
    target_accuracy: list[float] = _f([0.97], gt=0, le=1)  # accuracies whose cost in bytes and rounds is reported
    lr_search: list[float] = _f([1.0], gt=0)  # multipliers of each method's own lr tried before its run; [1.0] = none
    lr_search_rounds: int = _f(2, ge=1, le=10**6)  # rounds of each lr-search run (the same budget for every method)
    seeds: list[int] = _f([], ge=0, lt=2**64)  # compare runs every method once per seed (seed and pranc.basis_seed follow it; the lr search uses the first); [] = `seed` alone (CLI: compare --seeds 0 1 2)


@dataclass
class PrivacyConfig:
    # Client-level differential privacy on each client's update (privacy.py): off unless epsilon or
    # noise_multiplier is set. Any run: --set privacy.epsilon=4
    epsilon: float | None = _f(None, gt=0, le=1000)  # target epsilon after federation.rounds; the noise multiplier is calibrated for it
    noise_multiplier: float | None = _f(None, gt=0, le=1e6)  # sigma directly, instead of a target epsilon (the epsilon spent is still reported)
    delta: float = _f(1e-5, gt=0, lt=1)  # delta of (epsilon, delta); must be below 1 / federation.num_clients
    clipping_norm: float = _f(1.0, gt=0, le=1e6)  # C: each client's update is clipped to this L2 norm; noise std is sigma x C
    mode: str = _f("central", choices=PRIVACY_MODES)  # central: the server clips, sums with equal weights and adds the noise; local: each client clips and adds its own

    @property
    def enabled(self) -> bool:
        return self.epsilon is not None or self.noise_multiplier is not None


@dataclass
class SecAggConfig:
    # Secure aggregation (secagg.py): each client masks its update with pairwise masks that cancel in the
    # sum, so the server learns only the round's sum (equal weights), never one client's update. It costs
    # a key round trip per round and 32 bits per value up. Any star run: --set secagg.enabled=true
    enabled: bool = _f(False)
    clip_range: float = _f(1.0, gt=0, le=1e6)  # each value of an update is clipped to [-clip_range, clip_range] for its 32-bit fixed-point code; replies count the values clipped (a warning per round, summary.json's secure_aggregation)


@dataclass
class LoggingConfig:
    # Trackers that also get rounds.csv's rows (or `pranc-fed train`'s epochs), besides the files of
    # out_dir: tensorboard (OUT/tensorboard; pip install tensorboard), wandb (OUT/wandb), mlflow
    # (OUT/mlflow.db unless MLFLOW_TRACKING_URI is set). Any run: --set 'logging.report_to=[tensorboard]'
    report_to: list[str] = _f([], choices=("tensorboard", "wandb", "mlflow"))
    project: str = _f("pranc-fed")  # W&B project / MLflow experiment the runs go to


@dataclass
class ExperimentConfig:
    name: str = _f("experiment")  # names the run and its output folder
    seed: int = _f(0, ge=0, lt=2**64)  # data partitioning, shuffling, client sampling, torch init
    out_dir: str = _f("runs/{name}")  # where results go; "{name}" expands to name; relative: to the working folder
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pranc: PrancConfig = field(default_factory=PrancConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    methods: MethodsConfig = field(default_factory=MethodsConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    secagg: SecAggConfig = field(default_factory=SecAggConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def __post_init__(self) -> None:
        if is_gossip(self.federation.topology):
            _check_gossip(self)
        if self.secagg.enabled:
            _check_secagg(self)
        p, fed = self.privacy, self.federation
        if not p.enabled:
            return
        if p.epsilon is not None and p.noise_multiplier is not None:
            raise ConfigError("privacy.epsilon and privacy.noise_multiplier both set: give one (a target epsilon, or "
                              "the noise multiplier whose epsilon is then reported)")
        if p.delta >= 1 / fed.num_clients:
            raise ConfigError(f"privacy.delta {p.delta:g} is not below 1 / federation.num_clients "
                              f"({1 / fed.num_clients:g}): such a delta allows releasing one client's data outright")
        if fed.method == "fedpm":
            raise ConfigError("privacy applies to methods that average updates; fedpm counts sampled masks: "
                              "use another federation.method or unset privacy.epsilon/noise_multiplier")
        if p.mode == "central" and (fed.aggregation != "mean" or fed.norm_bound != "none"):
            raise ConfigError("central privacy clips and averages every update itself: set federation.aggregation=mean "
                              "and federation.norm_bound=none (or privacy.mode=local, after whose noise any rule is "
                              "post-processing)")

    def resolved_out_dir(self) -> Path:
        """`out_dir` with "{name}" replaced by `name`."""
        return Path(self.out_dir.replace("{name}", self.name))


def _check_gossip(cfg: ExperimentConfig) -> None:
    """What decentralised mode (federation.topology != star) cannot do, refused in one line each."""
    from .methods import gossip_methods
    fed, name = cfg.federation, f"federation.topology={cfg.federation.topology}"
    refusals = [
        (fed.method not in gossip_methods(), f"federation.method {fed.method!r} cannot gossip; choose one of "
                                             f"{', '.join(gossip_methods())}"),
        (fed.server_optimizer != "avg" or fed.server_lr != 1.0,
         "there is no server optimiser: set federation.server_optimizer=avg and federation.server_lr=1"),
        (fed.resume, "a decentralised run cannot resume (the agents' states live on the agents): "
                     "set federation.resume=false"),
        (fed.client_eval, "the relay evaluates every agent's model centrally: set federation.client_eval=false"),
        (fed.method == "pranc" and cfg.pranc.reseed_period > 0, "re-seeded PRANC needs a server that folds "
                                                                "periods: set pranc.reseed_period=0"),
        (cfg.privacy.enabled, "the privacy accountant covers a server's average, not gossip: unset "
                              "privacy.epsilon and privacy.noise_multiplier"),
        (fed.method == "pranc" and not cfg.pranc.share_local_params,
         "agents mix their whole state: set pranc.share_local_params=true"),
    ]
    _refuse(refusals, name, "federation.topology=star")


def _check_secagg(cfg: ExperimentConfig) -> None:
    """What secure aggregation (secagg.enabled) cannot do, refused in one line each: the server sees only
    the sum, so every rule that reads a single update is impossible."""
    from .methods import secure_methods
    fed = cfg.federation
    refusals = [
        (fed.method not in secure_methods(), f"federation.method {fed.method!r} cannot be securely aggregated (the "
                                             f"server sees only the sum); choose one of {', '.join(secure_methods())}"),
        (is_gossip(fed.topology), "decentralised agents mix their neighbours' states, not a sum: set "
                                  "federation.topology=star"),
        (fed.aggregation != "mean" or fed.norm_bound != "none",
         "the server sees only the sum of the updates: set federation.aggregation=mean and federation.norm_bound=none"),
        (fed.method == "pranc" and cfg.pranc.reseed_period > 0,
         "a masked reply cannot carry re-seeded PRANC's period check: set pranc.reseed_period=0"),
    ]
    _refuse(refusals, "secagg.enabled", "secagg.enabled=false")


def _refuse(refusals: list[tuple[bool, str]], setting: str, instead: str) -> None:
    """A ConfigError for the first refusal that applies: "SETTING: REASON (or INSTEAD)"."""
    for refused, reason in refusals:
        if refused:
            raise ConfigError(f"{setting}: {reason} (or {instead})")


# ---------------------------------------------------------------- type and rule checks

_BOUNDS = {"gt": (operator.gt, ">"), "ge": (operator.ge, ">="), "lt": (operator.lt, "<"), "le": (operator.le, "<=")}


def _type_name(hint: Any) -> str:
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in args)
    if origin is list:
        return f"list of {_type_name(args[0])}"
    return hint.__name__


def _check_type(value: Any, hint: Any, key: str) -> Any:
    """`value` if it has type `hint` (an int is widened to float), else ConfigError."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        try:
            return _check_type(value, inner, key)
        except ConfigError:
            if get_origin(inner) is not None:  # keep the element-level message of a list
                raise
    elif origin is list and isinstance(value, list):
        return [_check_type(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    elif hint is float and type(value) is int:
        return _check_type(float(value) if abs(value) < 2**1023 else math.inf, hint, key)
    elif hint is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: {value!r} is not a finite number")
    elif origin is None and isinstance(value, hint) and (type(value) is not bool or hint is bool):
        return value
    raise ConfigError(f"{key}: expected {_type_name(hint)}, got {value!r} ({type(value).__name__})")


def _check_rules(value: Any, meta: Mapping[str, Any], key: str, siblings: Mapping[str, Any]) -> None:
    items = [(f"{key}[{i}]", v) for i, v in enumerate(value)] if isinstance(value, list) else [(key, value)]
    for key, v in items:
        if v is None:
            continue
        if isinstance(v, str) and not v:
            raise ConfigError(f"{key}: must be a non-empty string")
        choices = meta.get("choices")
        choices = choices() if callable(choices) else choices
        if choices is not None and v not in choices:
            raise ConfigError(f"{key}: {v!r} is not allowed; choose one of {', '.join(choices)}")
        if "pattern" in meta and not re.fullmatch(meta["pattern"][0], v):
            raise ConfigError(f"{key}: {v!r} is not allowed; expected {meta['pattern'][1]}")
        for rule, (op, sym) in _BOUNDS.items():
            if rule in meta:
                bound = meta[rule]  # a number, or the name of a sibling field
                limit = siblings[bound] if isinstance(bound, str) else bound
                text = f"{bound} ({limit})" if isinstance(bound, str) else bound
                if not op(v, limit):
                    raise ConfigError(f"{key}: {v!r} is out of range; must be {sym} {text}")


def _dotted_keys(cls: type | None = None, prefix: str = "") -> list[str]:
    """Every settable key of the schema, e.g. "federation.rounds"."""
    keys = []
    for name, hint in get_type_hints(cls or ExperimentConfig).items():
        keys += _dotted_keys(hint, f"{prefix}{name}.") if dataclasses.is_dataclass(hint) else [prefix + name]
    return keys


def _unknown(key: str, known: Iterable[str], prefix: str) -> ConfigError:
    """Error for an unknown key, suggesting the closest key of its section, else of any section."""
    match = [prefix + m for m in difflib.get_close_matches(key, list(known), n=1)]
    if not match:
        leaves = {k.rsplit(".", 1)[-1]: k for k in _dotted_keys()}
        match = [leaves[m] for m in difflib.get_close_matches(key, list(leaves), n=1)]
    hint = f"; did you mean '{match[0]}'?" if match else f"; known keys: {', '.join(known)}"
    return ConfigError(f"unknown config key '{prefix}{key}'{hint}")


def _build(cls: type, data: Any, prefix: str = "") -> Any:
    """An instance of dataclass `cls` from a mapping, checking keys, types and rules."""
    if data is None:  # an empty section (`data:` with everything commented out)
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping of keys, got {data!r}")
    hints, fields = get_type_hints(cls), {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise _unknown(str(key), fields, prefix)
    values = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, f"{prefix}{name}.")
        else:
            values[name] = _check_type(value, hint, prefix + name)
    obj = cls(**values)
    for name, f in fields.items():
        if not dataclasses.is_dataclass(hints[name]):
            _check_rules(getattr(obj, name), f.metadata, prefix + name, vars(obj))
    return obj


# ---------------------------------------------------------------- YAML

class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-3` as a float (YAML 1.2) and rejects duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        keys = [self.construct_object(k, deep=True) for k, _ in node.value]
        for k in keys:
            if keys.count(k) > 1:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {k!r}", node.start_mark)
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def _parse_value(text: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return text  # e.g. a path with characters YAML dislikes: take it verbatim


# ---------------------------------------------------------------- public API

def config_from_dict(d: Mapping[str, Any]) -> ExperimentConfig:
    """A validated config from a (nested) dict as written in YAML; missing keys take defaults."""
    return _build(ExperimentConfig, d)


def config_to_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """The nested dict of `cfg`; `config_from_dict(config_to_dict(cfg)) == cfg`."""
    return dataclasses.asdict(cfg)


def validate(cfg: ExperimentConfig) -> ExperimentConfig:
    """Check a config built or changed in code; returns a validated copy."""
    return config_from_dict(config_to_dict(cfg))


def apply_overrides(cfg: ExperimentConfig, overrides: Iterable[str]) -> ExperimentConfig:
    """A new config with "section.key=value" overrides applied (values parsed as YAML), validated."""
    d = config_to_dict(cfg)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. federation.rounds=5")
        *path, leaf = key.split(".")
        node: Any = d
        for part in path:
            node = node.setdefault(part, {}) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: '{'.'.join(path)}' is not a config section")
        if isinstance(node.get(leaf), dict):
            raise ConfigError(f"override {item!r}: '{key}' is a section; set one of its keys, e.g. {key}.<key>=value")
        value = _parse_value(text.strip())
        if isinstance(node.get(leaf), str) and isinstance(value, (bool, int, float)):
            value = text.strip()  # a str field: `name=2024` or `name=yes` stays text
        node[leaf] = value
    return config_from_dict(d)


def load_config(path: str | Path | None, overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Read the YAML config at `path` (None = defaults), apply overrides, validate."""
    data: Any = {}
    if path is not None:
        try:
            data = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_Loader)
        except OSError as e:
            raise ConfigError(f"cannot read config file {str(path)!r}: {e.strerror or e}") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {str(path)!r} is not valid YAML: {e}") from e
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"config file {str(path)!r} must be a mapping of sections, got {type(data).__name__}")
    try:
        cfg = config_from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path is not None else str(e)) from None
    return apply_overrides(cfg, overrides)


def flat_overrides(run_config: Mapping[str, Any]) -> list[str]:
    """Override strings from a Flower run config.

    Flower only accepts run-config keys declared in pyproject.toml, so overrides travel in one
    declared key, `overrides` ("federation.rounds=5 pranc.num_coeffs=1000", shell-quoted).
    Flower's own keys (FLOWER_KEYS, e.g. num-server-rounds) override the config key they name
    unless 0; any other dotted key ({"federation.rounds": 5}, from Python) is taken as an override too.
    """
    out = shlex.split(str(run_config.get(OVERRIDES_KEY, "")))
    for key, value in run_config.items():
        if key in (CONFIG_FILE_KEY, OVERRIDES_KEY) or (key in FLOWER_KEYS and value == 0):
            continue
        text = value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).splitlines()[0]
        out.append(f"{FLOWER_KEYS.get(key, key)}={text}")
    return out


def config_from_run_config(run_config: Mapping[str, Any], base_dir: str | Path | None = None) -> ExperimentConfig:
    """What a Flower app does first: load `config-file` (relative to base_dir) and apply the other keys."""
    path = run_config.get(CONFIG_FILE_KEY)
    if path is not None and base_dir is not None and not Path(path).is_absolute():
        path = Path(base_dir) / path
    return load_config(path, flat_overrides(run_config))
