"""Experiments built on training and probes: compare, transfer, evaluate, bench, curves, reports."""
