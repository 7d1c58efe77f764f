"""pranc-fed: federated learning that sends PRANC coefficients instead of weights."""

__version__ = "0.1.0"
