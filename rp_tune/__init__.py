"""rp_tune: sweeps of randomly pruned networks (Liu et al. 2022; Gadhikar et al. 2023)."""

__version__ = "0.1.0"
