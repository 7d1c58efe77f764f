"""The DP noise of docs/results.md's 100-client table in weight space: PRANC's alpha noise z ~ N(0, s^2)
(s = sigma C / n at epsilon 8: 1.276 / 100) moves LeNet's weights by B z; dense FedAvg's noise is s per
weight. Prints both per-weight standard deviations and theta0's. Run from the checkout."""
import torch

from pranc_fed.basis import expand_differentiable
from pranc_fed.models import build_model
from pranc_fed.pranc import PrancModel

torch.manual_seed(0)
model = PrancModel(build_model("lenet", 10, 1), 5000, seed=0, arch="lenet")
s = 1.276 / 100
with torch.no_grad():
    moved = expand_differentiable(model.basis, torch.randn(5000) * s) - expand_differentiable(model.basis, torch.zeros(5000))
print(f"per-weight std: PRANC B z {moved.std().item():.4f}, dense {s:.4f} (x{moved.std().item() / s:.2f}); "
      f"theta0 {model.basis.theta0.std().item():.4f}")
