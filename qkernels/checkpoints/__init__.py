"""Checkpoints quantized by other tools, read into the canonical weight format (docs/numerics.md
section 1) with their own integers: one module per format."""
