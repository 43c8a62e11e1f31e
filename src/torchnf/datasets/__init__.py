"""Toy 2-D densities (with true log-density where known) and tabular loaders."""
