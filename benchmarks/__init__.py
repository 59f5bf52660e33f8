"""GPU benchmarks: `python -m benchmarks dit|vae ...`. Results go to docs/bench/ as JSON."""
