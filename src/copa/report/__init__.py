"""Figures and tables of the reproduction report."""
