"""tpo-sweeps: Target Policy Optimization and its baselines as Hydra sweeps with a results DB."""

__version__ = "0.1.0"
