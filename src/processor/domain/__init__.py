"""Racing domain (SPEC §9): control passes, timing records and stage results from stored fixes.

`model` is the shared vocabulary; `geometry`, `timing` and `ranking` are pure (no I/O, no Trio);
the engine that feeds them from the database hangs off the root nursery. `processor.core` never
imports this package (import-linter contract).
"""
