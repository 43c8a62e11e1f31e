"""Bijections, grouped by family."""
