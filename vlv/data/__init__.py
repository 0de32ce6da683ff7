"""Data formats, sources and validators used by the data steps."""
