"""Model wrappers (kept apart from the steps that use them)."""
