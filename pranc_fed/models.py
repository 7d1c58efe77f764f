"""The networks pranc-fed trains, a registry that names them, and the model a config builds.

Plain PyTorch ``nn.Module`` s, no tricks: every model has a fixed structure given
(num_classes, in_channels), uses only out-of-place ops, and works with
``torch.func.functional_call``.

Convention the rest of the project relies on (basis/, pranc.py, methods/):

* **covered** parameters are ALL weights and biases of ``nn.Conv*`` / ``nn.Linear``
  layers, in ``named_parameters()`` order. PRANC represents exactly these as
  ``theta0 + B @ alpha``.
* everything else is **local**: normalisation affine parameters (trained normally,
  sent dense or kept on the client) and floating-point buffers such as BatchNorm
  running statistics. Integer buffers (``num_batches_tracked``) are bookkeeping and
  are not counted.

Input sizes: ``lenet`` 1x28x28 (MNIST), the CIFAR models 3x32x32, ``resnet18``
3x64x64 and larger (it has an ImageNet stem that downsamples 4x before stage 1).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .basis.layout import COVERED_LAYER_TYPES, covered_parameters  # what PRANC covers: defined once, there
from .user_code import UserCodeError, first_line, is_import_path, resolve

if TYPE_CHECKING:  # config and pranc import this module
    from .config import ExperimentConfig
    from .data import DatasetBundle
    from .pranc import PrancModel


# --------------------------------------------------------------------------- LeNet


def lenet(num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """LeNet-5 for 28x28 inputs, no padding (44,426 parameters for MNIST)."""
    return _lenet(num_classes, in_channels, flat_side=4)


def lenet_cifar(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """LeNet-5 for 32x32 inputs, no padding (62,006 parameters for CIFAR-10)."""
    return _lenet(num_classes, in_channels, flat_side=5)


def _lenet(num_classes: int, in_channels: int, flat_side: int) -> nn.Module:
    # 28 -conv5-> 24 -pool-> 12 -conv5-> 8 -pool-> 4   (32 gives 5)
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * flat_side * flat_side, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, num_classes),
    )


# ---------------------------------------------------------------- residual blocks


class PadShortcut(nn.Module):
    """Option-A shortcut of He et al. (2016): strided identity + zero channels.

    Has no parameters, so the CIFAR ResNets cover only conv/linear weights.
    """

    def __init__(self, stride: int, extra_channels: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra_channels = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        half = self.extra_channels // 2
        # F.pad pads the last dims first: (W, W, H, H, C, C).
        return F.pad(x, (0, 0, 0, 0, half, self.extra_channels - half))


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm; shortcut "A" (zero-pad) or "B" (1x1 conv + BN)."""

    def __init__(self, in_planes: int, planes: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            if shortcut == "A":
                self.downsample = PadShortcut(stride, planes - in_planes)
            else:
                # Same names as torchvision (downsample.0 / downsample.1).
                self.downsample = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                    nn.BatchNorm2d(planes),
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.downsample(x))


def _stage(in_planes: int, planes: int, blocks: int, stride: int, shortcut: str) -> nn.Sequential:
    layers = [BasicBlock(in_planes, planes, stride, shortcut)]
    layers += [BasicBlock(planes, planes, 1, shortcut) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


# ------------------------------------------------------------------- CIFAR ResNets


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs: 3 stages of n blocks, 16/32/64 channels."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        n = blocks_per_stage
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = _stage(16, 16, n, 1, "A")
        self.layer2 = _stage(16, 32, n, 2, "A")
        self.layer3 = _stage(32, 64, n, 2, "A")
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, num_classes)
        # The reference implementation initialises conv and linear weights with
        # Kaiming-normal (fan_in); BatchNorm keeps weight=1, bias=0.
        for m in self.modules():
            if isinstance(m, COVERED_LAYER_TYPES):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


def resnet20(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """CIFAR ResNet-20 (He et al. 2016, option-A shortcuts), ~0.27M parameters."""
    return CifarResNet(3, num_classes, in_channels)


def resnet56(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """CIFAR ResNet-56 (He et al. 2016, option-A shortcuts), ~0.85M parameters."""
    return CifarResNet(9, num_classes, in_channels)


# ------------------------------------------------------------------------ AlexNet


def alexnet_cifar(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """AlexNet-style net for 32x32: 5 conv (+BN) and 3 FC layers, ~2.4M parameters.

    Narrower than ImageNet AlexNet (64-128-256-256-128 channels, 3x3 kernels,
    512-256 hidden units) so that it trains on CIFAR in minutes; no Dropout.
    """

    def conv(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        *conv(in_channels, 64), nn.MaxPool2d(2),  # 32 -> 16
        *conv(64, 128), nn.MaxPool2d(2),  # 16 -> 8
        *conv(128, 256),
        *conv(256, 256),
        *conv(256, 128), nn.MaxPool2d(2),  # 8 -> 4
        nn.Flatten(),
        nn.Linear(128 * 4 * 4, 512), nn.ReLU(),
        nn.Linear(512, 256), nn.ReLU(),
        nn.Linear(256, num_classes),
    )  # fmt: skip


# ----------------------------------------------------------------------- ResNet18


class ResNet18(nn.Module):
    """torchvision-style ResNet-18 (7x7 stem, 4 stages 64..512, option-B shortcuts).

    Written out (not wrapped) so that it has no in-place ops; module names match
    ``torchvision.models.resnet18`` so its state_dict loads into this model.
    """

    def __init__(self, num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = _stage(64, 64, 2, 1, "B")
        self.layer2 = _stage(64, 128, 2, 2, "B")
        self.layer3 = _stage(128, 256, 2, 2, "B")
        self.layer4 = _stage(256, 512, 2, 2, "B")
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(512, num_classes)
        for m in self.modules():  # torchvision's init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.flatten(self.avgpool(x)))


def resnet18(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """ResNet-18 for 64x64 and larger inputs, ~11.2M parameters."""
    return ResNet18(num_classes, in_channels)


# ----------------------------------------------------------------------- registry


@dataclass(frozen=True)
class ModelInfo:
    """How to build one architecture and what input it expects."""

    builder: Callable[..., nn.Module]  # builder(num_classes=..., in_channels=...)
    input_shape: tuple[int, int, int]  # default (C, H, W)
    description: str


MODELS: dict[str, ModelInfo] = {
    "lenet": ModelInfo(lenet, (1, 28, 28), "LeNet-5 for 28x28 (MNIST), no padding"),
    "lenet_cifar": ModelInfo(lenet_cifar, (3, 32, 32), "LeNet-5 for 32x32 (CIFAR)"),
    "resnet20": ModelInfo(resnet20, (3, 32, 32), "CIFAR ResNet-20, BatchNorm, option-A shortcuts"),
    "resnet56": ModelInfo(resnet56, (3, 32, 32), "CIFAR ResNet-56, BatchNorm, option-A shortcuts"),
    "alexnet_cifar": ModelInfo(alexnet_cifar, (3, 32, 32), "AlexNet-style, 5 conv + BN, 3 FC (32x32)"),
    "resnet18": ModelInfo(resnet18, (3, 64, 64), "torchvision-style ResNet-18 (64x64 and up)"),
}


def build_model(arch: str, num_classes: int = 10, in_channels: int | None = None) -> nn.Module:
    """Build a registered architecture (``in_channels=None`` uses its default input), or the user's
    own: ``arch`` an import path ``MODULE:ATTRIBUTE`` (``build_user_model``). Only a config names
    an import path here; a model file's is imported only on the user's say (inference.py)."""
    if is_import_path(arch):
        return build_user_model(arch, num_classes, in_channels)
    info = MODELS.get(arch.lower())
    if info is None:
        raise ValueError(f"unknown model architecture {arch!r}; known: {', '.join(MODELS)}, or an import path "
                         "MODULE:ATTRIBUTE of your own factory or nn.Module class")
    if in_channels is None:
        in_channels = info.input_shape[0]
    return info.builder(num_classes=num_classes, in_channels=in_channels)


def build_user_model(path: str, num_classes: int, in_channels: int | None) -> nn.Module:
    """``factory(num_classes=..., in_channels=...)`` of the import path: a function returning an
    ``nn.Module``, or an ``nn.Module`` class. UserCodeError (naming model.arch) when the factory
    cannot be imported, raises, or returns anything but an nn.Module."""
    if in_channels is None:
        raise UserCodeError(f"model.arch {path!r} is your own model: it needs in_channels, which only the data "
                            "gives; build it with model_args of the dataset")
    factory = resolve(path, "model.arch")
    try:
        module = factory(num_classes=num_classes, in_channels=in_channels)
    except Exception as e:
        raise UserCodeError(f"model.arch: {path}(num_classes={num_classes}, in_channels={in_channels}) raised "
                            f"{first_line(e)}") from None
    if not isinstance(module, nn.Module):
        raise UserCodeError(f"model.arch: {path}(num_classes={num_classes}, in_channels={in_channels}) returned "
                            f"a {type(module).__name__}, not a torch.nn.Module")
    return module


# ------------------------------------------------------------ the model of a config


def model_args(bundle: DatasetBundle) -> dict:
    """Build arguments of the model for this dataset, stored in .pranc files."""
    return {"num_classes": bundle.num_classes, "in_channels": bundle.preprocessing.input_shape[0]}


def build_dense(cfg: ExperimentConfig, bundle: DatasetBundle, device: torch.device) -> nn.Module:
    # The seed fixes the dense init so that every party starts from the same weights.
    torch.manual_seed(cfg.seed)
    return build_model(cfg.model.arch, **model_args(bundle)).to(device)


def build_pranc(cfg: ExperimentConfig, bundle: DatasetBundle, device: torch.device) -> PrancModel:
    """The dense model of build_dense wrapped as theta0 + B @ alpha, with the config's basis settings."""
    from .pranc import PrancModel  # here, not at the top: pranc.py imports this module
    p = cfg.pranc
    return PrancModel(build_dense(cfg, bundle, device), p.num_coeffs, p.basis_seed, cfg.model.arch,
                      layout=p.basis_layout, budget_mb=p.basis_budget_mb, cache=p.cache, device=device,
                      cache_dtype=p.cache_dtype)


# ---------------------------------------------------------- covered / local split


def covered_parameter_names(module: nn.Module) -> list[str]:
    """Names of the covered parameters (conv/linear weights and biases), in order: the basis's definition."""
    return [name for name, *_ in covered_parameters(module)]


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(covered, local) element counts.

    local = non-covered parameters + floating-point buffers (BatchNorm running
    mean/var; ``num_batches_tracked`` is an integer and is not counted).
    """
    covered_names = set(covered_parameter_names(module))
    covered = local = 0
    for name, p in module.named_parameters():
        if name in covered_names:
            covered += p.numel()
        else:
            local += p.numel()
    local += sum(b.numel() for b in module.buffers() if b.is_floating_point())
    return covered, local


def describe_models(num_classes: int = 10) -> list[dict]:
    """One row per registered model, for ``pranc-fed models``."""
    rows = []
    for name, info in MODELS.items():
        covered, local = count_parameters(build_model(name, num_classes))
        rows.append(
            {
                "name": name,
                "input_shape": list(info.input_shape),
                "covered": covered,
                "local": local,
                "description": info.description,
            }
        )
    return rows
