"""Data layer: official dataset formats, the synthetic world, and (later) filtering and datasets."""
