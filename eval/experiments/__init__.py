"""Experiments built on training and probes: compare, transfer, evaluate, bench, sweep, diagnose, curves, reports."""
