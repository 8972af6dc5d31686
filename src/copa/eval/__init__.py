"""Evaluation: metrics with their official definitions, and the probes that compute them on a checkpoint."""
