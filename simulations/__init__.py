"""Runnable experiments: the local multi-silo simulation and its report."""
