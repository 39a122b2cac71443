"""Benchmarks: each module runs alone (`python -m bench.<name> [--quick] [--json]`) and prints one JSON line last."""
