"""Downstream tasks: fine-tuning modules, their engine tasks and their evaluation."""
