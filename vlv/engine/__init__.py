"""Step engine: declarations, planning, store, execution on Ray."""
