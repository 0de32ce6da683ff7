"""Fault-injection helpers shared by tests/faults and benchmarks/soak.py."""
