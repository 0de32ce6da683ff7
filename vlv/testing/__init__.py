"""Support for tests and benchmarks, imported by them (never by the pipeline): `builders` (sample captions and
images, tiny model folders, published outputs, running a step), `step_inputs` (small inputs of single steps),
`tiny_training` (synthetic shards and the tiny stage tasks), `gemini_rows` (the ingestion benchmark's input),
`fake_secrets`, `driver_faults` (tests/faults, benchmarks/soak.py), an S3 server (`object_store`) and an
OpenAI-compatible chat server with injectable faults (`chat_server`)."""
