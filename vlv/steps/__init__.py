"""Pipeline steps: one module each, declaring inputs, config section and resources (see vlv.engine.step)."""
