"""Support for tests and benchmarks, imported by them (never by the pipeline): `builders` (sample captions and
images, tiny model folders, published outputs, running a step), `step_inputs` (small inputs of single steps),
`tiny_training` (synthetic shards and the tiny stage tasks), `gemini_rows` (the ingestion benchmark's input),
`fake_secrets`, `driver_faults` (tests/faults, benchmarks/soak.py), an S3 server (`object_store`), an
OpenAI-compatible chat server with injectable faults (`chat_server`), a three-step toy pipeline for engine tests
(`toy_steps`), a one-step pipeline held open by a test (`gated_pipeline`, run as its own driver), doubles that
travel into Ray Train workers (`train_doubles`), the loopback check of listening sockets (`sockets`) and a
headless browser (`headless_browser`). Tests import helpers from here, never from another test module."""
