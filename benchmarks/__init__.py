"""The benchmark (`just bench`): see `benchmarks/run.py`."""
