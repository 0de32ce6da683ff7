"""Test helpers shared by tests and benchmarks: driver faults (tests/faults, benchmarks/soak.py), an S3 server,
and an OpenAI-compatible chat server with injectable faults."""
