"""Benchmarks and the soak test; a regular package so ``python -m bench.httpbench`` resolves."""
