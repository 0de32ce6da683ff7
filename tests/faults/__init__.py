"""Driver kills, concurrent invocations and corrupt outputs (the "Faults" part of the reliability issue)."""
