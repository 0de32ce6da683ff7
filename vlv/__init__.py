"""VLV pipeline library."""
