"""copa-repro: a reproducibility harness for COPA and related vision-language pre-training papers."""

__version__ = "0.1.0"
