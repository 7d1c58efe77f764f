"""The server's update rule (aggregation.py): each robust rule and server optimiser by hand, and
through the strategy on real replies."""

import numpy as np
import pytest

from pranc_fed import aggregation
from pranc_fed.aggregation import ServerOptimizer
from pranc_fed.config import ConfigError, load_config
from tests.test_federated import K, make_strategy, reply, task_identity  # noqa: F401 - fixture


def deltas(*rows):
    return [{"w": np.asarray(r, dtype=np.float32)} for r in rows]


def test_weights_follow_the_rule():
    claimed = [100, 100, 300, 10_000]
    np.testing.assert_array_equal(aggregation.client_weights(claimed, "examples", 2), claimed)
    np.testing.assert_array_equal(aggregation.client_weights(claimed, "capped", 2), [100, 100, 300, 400])  # median 200
    np.testing.assert_array_equal(aggregation.client_weights(claimed, "equal", 2), [1, 1, 1, 1])


def test_clip_scales_only_the_long_updates_to_the_bound():
    rows = deltas([3, 4], [0, 1], [0, 2], [30, 40])  # norms 5, 1, 2, 50: median 3.5
    clipped, refused = aggregation.bound_norms(rows, "clip", 2.0)
    assert refused == {}
    np.testing.assert_array_equal(clipped[1]["w"], rows[1]["w"])
    np.testing.assert_allclose([aggregation.update_norm(d) for d in clipped], [5, 1, 2, 7], rtol=1e-6)
    np.testing.assert_allclose(clipped[3]["w"] / np.linalg.norm(clipped[3]["w"]), [0.6, 0.8], rtol=1e-6)


def test_drop_refuses_the_long_updates_with_a_reason():
    _, refused = aggregation.bound_norms(deltas([3, 4], [0, 1], [0, 2], [30, 40]), "drop", 2.0)
    assert list(refused) == [3] and "exceeds 2 x the round's median norm (7)" in refused[3]


def test_norm_covers_every_key():
    assert aggregation.update_norm({"a": np.array([3.0]), "b": np.array([4.0])}) == 5.0


def test_median_and_trimmed_mean_ignore_one_extreme_per_coordinate():
    rows = deltas([1, 10], [2, 20], [3, 30], [1000, -1000], [4, 40])
    w = np.ones(5)
    np.testing.assert_array_equal(aggregation.combine(rows, w, "median", 0)["w"], [3, 20])
    np.testing.assert_allclose(aggregation.combine(rows, w, "trimmed_mean", 0.2)["w"], [3, 20])  # cuts 1 from each end
    np.testing.assert_allclose(aggregation.combine(rows, w, "trimmed_mean", 0.0)["w"],
                               aggregation.combine(rows, w, "mean", 0)["w"], rtol=1e-6)


@pytest.mark.parametrize("byzantine, select", [(0, 1), (1, 1), (1, 3), (2, 2)])
def test_krum_selects_what_flowers_multikrum_selects(byzantine, select):
    from flwr.app import Array, ArrayRecord, RecordDict
    from flwr.serverapp.strategy.multikrum import select_multikrum
    rng = np.random.default_rng(byzantine * 10 + select)
    rows = [{"a": rng.normal(size=5).astype(np.float32), "b": rng.normal(size=(2, 3)).astype(np.float32)}
            for _ in range(7)]
    rows[2]["a"] *= 40  # an outlier, so the choice is not a coin toss
    contents = [RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in r.items()})}) for r in rows]
    theirs = select_multikrum(contents, num_malicious_nodes=byzantine, num_nodes_to_select=select)
    ours = aggregation.krum_select(rows, byzantine, select)
    assert [contents.index(c) for c in theirs] == list(ours) and 2 not in ours


def test_multi_krum_averages_the_chosen_replies_with_their_weights():
    rows = deltas([1.0], [1.2], [0.8], [500.0])
    combined = aggregation.combine(rows, np.array([1.0, 1.0, 2.0, 1.0]), "krum", byzantine=1, select=3)
    np.testing.assert_allclose(combined["w"], [(1.0 + 1.2 + 2 * 0.8) / 4])
    np.testing.assert_allclose(aggregation.combine(rows, np.ones(4), "krum", byzantine=1)["w"], [1.0])


def test_weighted_mean():
    np.testing.assert_allclose(aggregation.combine(deltas([1.0], [4.0]), np.array([1.0, 3.0]), "mean", 0)["w"], [3.25])


def test_fedpm_refuses_rules_that_average_updates():
    with pytest.raises(ConfigError, match="fedpm counts sampled masks"):
        load_config(None, ["federation.method=fedpm", "federation.aggregation=median"])


@pytest.mark.parametrize("setting", [["federation.aggregation=median"], ["federation.norm_bound=drop"],
                                     ["federation.aggregation=trimmed_mean", "federation.trim_fraction=0.34"]])
def test_one_attacker_of_three_cannot_move_the_model_far(setting):
    strategy, _ = make_strategy(*setting)
    honest = [np.full(K, 1.0, np.float32), np.full(K, 1.2, np.float32)]
    replies = [reply(1, strategy, honest[0]), reply(2, strategy, honest[1]),
               reply(3, strategy, np.full(K, -1e6, np.float32))]
    strategy.aggregate_train(1, replies)
    assert np.all((strategy.state["alpha"] >= 1.0) & (strategy.state["alpha"] <= 1.2))


def test_a_dropped_long_update_is_listed_with_the_other_drops():
    strategy, _ = make_strategy("federation.norm_bound=drop")
    strategy.aggregate_train(1, [reply(1, strategy, np.full(K, 1.0, np.float32)),
                                 reply(2, strategy, np.full(K, 1.1, np.float32)),
                                 reply(3, strategy, np.full(K, 50.0, np.float32))])
    assert list(strategy.rounds[-1].dropped) == ["3"] and strategy.rounds[-1].received == 2
    np.testing.assert_allclose(strategy.state["alpha"], 1.05, rtol=1e-6)


def test_a_claimed_size_buys_at_most_the_cap():
    strategy, _ = make_strategy("federation.client_weighting=capped", "federation.weight_cap=2")
    strategy.aggregate_train(1, [reply(1, strategy, np.zeros(K, np.float32), 100),
                                 reply(2, strategy, np.zeros(K, np.float32), 100),
                                 reply(3, strategy, np.full(K, 4.0, np.float32), 10_000_000)])
    np.testing.assert_allclose(strategy.state["alpha"], 4.0 * 200 / 400, rtol=1e-6)


def test_server_optimizers_match_hand_computation():
    state, d1, d2 = {"w": np.array([1.0, -2.0])}, {"w": np.array([0.5, 0.1])}, {"w": np.array([-0.2, 0.3])}
    avg = ServerOptimizer("avg", lr=0.5, momentum=0.9)
    np.testing.assert_allclose(avg.step(state, d1)["w"], [1.25, -1.95])
    avgm = ServerOptimizer("avgm", lr=1.0, momentum=0.9)
    s1 = avgm.step(state, d1)
    s2 = avgm.step(s1, d2)  # m = 0.9 * d1 + d2
    np.testing.assert_allclose(s2["w"], state["w"] + d1["w"] + 0.9 * d1["w"] + d2["w"])
    adam = ServerOptimizer("adam", lr=0.1, momentum=0.9, beta2=0.99, tau=1e-3)
    m = 0.1 * d1["w"]
    v = 0.01 * d1["w"] ** 2
    np.testing.assert_allclose(adam.step(state, d1)["w"], state["w"] + 0.1 * m / (np.sqrt(v) + 1e-3))


def test_in_a_real_simulation_the_median_resists_an_attacker_that_takes_over_the_mean(tmp_path):
    """One of three clients scales its change of alpha by 100 (simulations/byzantine_client.py):
    the plain mean follows it to chance, the coordinate-wise median does not."""
    import json
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "simulations"))
    from attack_study import make_app
    from pranc_fed.runner import simulate
    small = ["federation.num_clients=3", "pranc.num_coeffs=200", "data.train_subset=1500", "data.test_subset=500",
             "train.batch_size=64", "pranc.alpha_lr=0.03", "federation.rounds=2"]
    app = make_app(tmp_path / "app", "scale", [0], 10_000_000)
    accuracy = {}
    for rule in ("mean", "median"):
        overrides = [*small, f"federation.aggregation={rule}"]
        simulate("configs/mnist_lenet.yaml", overrides, load_config("configs/mnist_lenet.yaml", overrides),
                 tmp_path / rule, app=app)
        accuracy[rule] = json.loads((tmp_path / rule / "summary.json").read_text())["final_test_accuracy"]
    assert accuracy["mean"] < 0.2 and accuracy["median"] > 0.3, accuracy  # chance is 0.1
