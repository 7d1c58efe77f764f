import pytest
import torch

from pranc_fed.models import (
    MODELS,
    build_model,
    count_parameters,
    covered_parameter_names,
    describe_models,
    lenet,
    resnet20,
)


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_every_model_builds_and_runs(arch: str) -> None:
    torch.manual_seed(0)
    shape = MODELS[arch].input_shape
    model = build_model(arch, num_classes=7, in_channels=shape[0])
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("arch", ["lenet", "resnet20", "alexnet_cifar"])
def test_structure_is_deterministic(arch: str) -> None:
    a, b = build_model(arch, 10), build_model(arch, 10)
    assert [(n, p.shape) for n, p in a.named_parameters()] == [(n, p.shape) for n, p in b.named_parameters()]


def test_lenet_counts() -> None:
    assert count_parameters(lenet()) == (44_426, 0)
    assert count_parameters(build_model("lenet_cifar", 10)) == (62_006, 0)


def test_resnet20_counts_and_local_params() -> None:
    model = resnet20()
    covered, local = count_parameters(model)
    assert 260_000 < covered < 280_000
    # BN affine (2 x 688) + running mean/var (2 x 688); num_batches_tracked excluded
    assert local == 4 * 688
    names = covered_parameter_names(model)
    assert all("bn" not in n for n in names)
    assert names == [n for n, _ in model.named_parameters() if n in set(names)]  # named_parameters order
    assert "fc.bias" in names and "conv1.weight" in names


def test_option_a_shortcut_has_no_parameters() -> None:
    block = resnet20().layer2[0]
    assert sum(p.numel() for p in block.downsample.parameters()) == 0


def test_other_input_channels() -> None:
    model = build_model("resnet20", num_classes=100, in_channels=1)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 100)
    assert build_model("lenet", 10, in_channels=3)(torch.randn(2, 3, 28, 28)).shape == (2, 10)


def test_functional_call_matches_forward() -> None:
    model = resnet20().eval()
    x = torch.randn(2, 3, 32, 32)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = torch.func.functional_call(model, {**params, **dict(model.named_buffers())}, (x,))
    torch.testing.assert_close(out, model(x))


def test_resnet18_matches_torchvision_names() -> None:
    torchvision = pytest.importorskip("torchvision")
    ours = build_model("resnet18", 10)
    ref = torchvision.models.resnet18(weights=None, num_classes=10)
    ours.load_state_dict(ref.state_dict())  # strict: same names and shapes
    assert count_parameters(ours)[0] + 9600 == sum(p.numel() for p in ref.parameters())


def test_unknown_arch() -> None:
    with pytest.raises(ValueError, match="lenet.*resnet20"):
        build_model("vgg16", 10)


def test_describe_models() -> None:
    rows = describe_models()
    assert [r["name"] for r in rows] == list(MODELS)
    lenet_row = rows[0]
    assert lenet_row["covered"] == 44_426 and lenet_row["input_shape"] == [1, 28, 28]
    assert all(isinstance(r["description"], str) and r["description"] for r in rows)
