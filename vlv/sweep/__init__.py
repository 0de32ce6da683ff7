"""Sweeps: the pipeline once per point of a grid of config values, on one store, compared in one table."""
