"""GPU benchmarks: `python -m mochi_runtime.bench dit|vae ...`. Results go to docs/bench/ as JSON."""
