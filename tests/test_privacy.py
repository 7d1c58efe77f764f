"""Differential privacy (privacy.py): the clipping bound, the noise's size, the accountant, the
config's refusals, both modes in the pipeline, and one real Flower simulation reporting epsilon."""

import csv
import json
import math

import numpy as np
import pytest
import torch

from pranc_fed.aggregation import update_norm
from pranc_fed.cli import check_privacy
from pranc_fed.config import ConfigError, load_config
from pranc_fed.data import load_dataset
from pranc_fed.methods import get_method
from pranc_fed.privacy import ORDERS, Privacy, add_noise, clip
from pranc_fed.runner import simulate

from .test_federated import K, make_strategy, reply, task_identity  # noqa: F401 - the fixture is used


def random_update(rng, scale):
    return {"alpha": (scale * rng.standard_normal(300)).astype(np.float32),
            "bias": (scale * rng.standard_normal((4, 5))).astype(np.float32)}


def test_clipping_bounds_the_whole_update_and_keeps_its_direction():
    rng = np.random.default_rng(0)
    for scale in (0.01, 0.3, 5.0, 1e4):
        update = random_update(rng, scale)
        clipped = clip(update, 2.0)
        assert update_norm(clipped) <= 2.0 * (1 + 1e-6)
        norm = update_norm(update)
        for key in update:  # the same direction: a common factor over every key
            np.testing.assert_allclose(clipped[key], update[key] * min(1.0, 2.0 / norm), rtol=1e-5)


def test_noise_std_is_sigma_times_clipping_norm_on_the_sum():
    cfg = load_config(None, ["privacy.noise_multiplier=1.5", "privacy.clipping_norm=0.2"])
    privacy = Privacy(cfg)
    rng = np.random.default_rng(1)
    # Five zero updates: the mean is pure noise of std sigma C / 5 per coordinate.
    zeros = [{"alpha": np.zeros(40_000, np.float32)} for _ in range(5)]
    noise = privacy.private_mean(zeros, rng)["alpha"]
    expected = 1.5 * 0.2 / 5
    assert abs(noise.std() / expected - 1) < 0.02 and abs(noise.mean()) < 4 * expected / math.sqrt(40_000)
    local = privacy.privatize_client({"alpha": np.zeros(40_000, np.float32)}, rng)["alpha"]
    assert abs(local.std() / (1.5 * 0.2) - 1) < 0.02
    plain = add_noise({"w": np.zeros(10_000, np.float32)}, 3.0, rng)["w"]
    assert abs(plain.std() / 3.0 - 1) < 0.03


def test_epsilon_grows_with_rounds_and_matches_the_gaussian_rdp_bound():
    cfg = load_config(None, ["privacy.noise_multiplier=2.0", "federation.rounds=20", "federation.num_clients=10"])
    privacy = Privacy(cfg)
    assert privacy.sample_rate == 1.0 and privacy.epsilon(0) == 0.0
    epsilons = [privacy.epsilon(r) for r in range(1, 21)]
    assert all(b > a for a, b in zip(epsilons, epsilons[1:]))
    # No subsampling: the Gaussian mechanism's RDP is exactly a T / (2 sigma^2) at order a; converted
    # to (epsilon, delta) as Balle et al. 2020 (Opacus's conversion), minimised over the same orders.
    for rounds in (1, 7, 20):
        orders = np.array(ORDERS)
        rdp = orders * rounds / (2 * 2.0 ** 2)
        expected = np.min(rdp - (np.log(1e-5) + np.log(orders)) / (orders - 1) + np.log((orders - 1) / orders))
        assert privacy.epsilon(rounds) == pytest.approx(expected, rel=1e-6)
        assert privacy.epsilon(rounds) < np.min(rdp + np.log(1e5) / (orders - 1))  # below the classic conversion


@pytest.mark.parametrize("overrides", [
    ["privacy.epsilon=4", "federation.rounds=12", "federation.num_clients=10"],
    ["privacy.epsilon=1", "federation.rounds=5", "federation.num_clients=100", "federation.fraction_train=0.1"],
])
def test_a_target_epsilon_is_reached_after_the_runs_rounds(overrides):
    cfg = load_config(None, overrides)
    privacy = Privacy(cfg)
    spent = privacy.epsilon(cfg.federation.rounds)
    assert cfg.privacy.epsilon - 0.02 <= spent <= cfg.privacy.epsilon
    assert privacy.sample_rate == cfg.federation.fraction_train


@pytest.mark.parametrize("overrides,key", [
    (["privacy.epsilon=0"], "privacy.epsilon"),
    (["privacy.epsilon=-1"], "privacy.epsilon"),
    (["privacy.noise_multiplier=0"], "privacy.noise_multiplier"),
    (["privacy.epsilon=4", "privacy.noise_multiplier=1"], "privacy.noise_multiplier"),
    (["privacy.epsilon=4", "privacy.delta=0.5"], "privacy.delta"),
    (["privacy.epsilon=4", "privacy.delta=0.4", "federation.num_clients=3"], "1 / federation.num_clients"),
    (["privacy.clipping_norm=0"], "privacy.clipping_norm"),
    (["privacy.mode=global"], "privacy.mode"),
    (["privacy.epsilon=4", "federation.method=fedpm"], "fedpm"),
    (["privacy.epsilon=4", "federation.aggregation=median"], "federation.aggregation=mean"),
])
def test_out_of_range_privacy_settings_are_one_line_errors(overrides, key):
    with pytest.raises(ConfigError) as error:
        load_config(None, overrides)
    assert key in str(error.value) and "\n" not in str(error.value)


def test_local_mode_takes_any_aggregation_rule():
    load_config(None, ["privacy.epsilon=4", "privacy.mode=local", "federation.aggregation=median"])


def test_an_unreachable_epsilon_is_refused_before_anything_starts():
    with pytest.raises(ConfigError, match="cannot be reached") as error:
        check_privacy(load_config(None, ["privacy.epsilon=1e-9"]))
    assert "\n" not in str(error.value)


def test_central_privacy_clips_each_reply_and_weighs_clients_equally():
    strategy, _ = make_strategy("privacy.noise_multiplier=1e-6", "privacy.clipping_norm=1.0")
    # Weighted by examples, the mean would be 0.5 x 10 in every coordinate; clipped to norm 1 with
    # equal weights, the two cancel.
    up, down = np.full(K, 10.0, np.float32), np.full(K, -10.0, np.float32)
    strategy.aggregate_train(1, [reply(1, strategy, up, 300), reply(2, strategy, down, 100)])
    assert update_norm({"a": strategy.state["alpha"]}) < 1e-4
    strategy.aggregate_train(2, [reply(1, strategy, up), reply(2, strategy, up)])
    assert update_norm({"a": strategy.state["alpha"]}) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("method", ["pranc", "fedavg"])
def test_local_privacy_replaces_the_clients_update_by_a_clipped_noised_one(method):
    cfg = load_config(None, [f"pranc.num_coeffs={K}", f"federation.method={method}", "privacy.mode=local",
                             "privacy.noise_multiplier=1e-6", "privacy.clipping_norm=0.5"])
    m = get_method(cfg)
    model = m.build_model(load_dataset("mnist"), torch.device("cpu"))
    start = m.state_of(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(3.0)  # a "training" step far longer than the bound
    m.privatize_update(model, start)
    now = m.state_of(model)
    assert update_norm({k: now[k] - start[k] for k in start}) == pytest.approx(0.5, rel=1e-3)


def test_simulation_reports_epsilon_per_round_under_secure_aggregation(tmp_path):
    """One real Flower simulation for both: local DP, whose noised updates are then masked (secagg.py)."""
    overrides = ["federation.rounds=2", "federation.num_clients=3", "pranc.num_coeffs=200", "data.train_subset=1500",
                 "data.test_subset=500", "train.batch_size=64", "privacy.epsilon=4", "privacy.mode=local",
                 "secagg.enabled=true", "secagg.clip_range=64"]
    cfg = load_config("configs/mnist_lenet.yaml", overrides)
    assert simulate("configs/mnist_lenet.yaml", overrides, cfg, tmp_path)
    rows = list(csv.DictReader((tmp_path / "rounds.csv").open()))
    epsilons = [float(r["epsilon"]) for r in rows]
    assert epsilons[0] == 0 and 0 < epsilons[1] < epsilons[2] <= 4 and epsilons[2] > 3.9
    assert {r["delta"] for r in rows} == {"1e-05"} and all(int(r["received"]) == 3 for r in rows[1:])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["privacy"]["mode"] == "local" and summary["privacy"]["epsilon_per_round"] == epsilons[1:]
    assert summary["privacy"]["noise_multiplier"] == pytest.approx(Privacy(cfg).noise_multiplier)
    assert summary["secure_aggregation"] == {"clip_range": 64.0, "clipped_values": 0, "rounds_lost": 0}
    ledger = list(csv.DictReader((tmp_path / "ledger.csv").open()))
    assert sum(r["phase"] == "secagg-keys" for r in ledger) == 2 * 2 * 3  # rounds x directions x clients
    masked = [int(r["bytes"]) for r in ledger if r["phase"] == "train" and r["direction"] == "up"]
    assert len(masked) == 6 and all(0 < b - 200 * 4 < 300 for b in masked)  # 32 bits a value, whatever the codec
