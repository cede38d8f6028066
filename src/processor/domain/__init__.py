"""Racing domain (docs/racing-domain.md): control passes, timing records and stage results from
stored fixes.

`model` is the shared vocabulary. The pure core (no I/O, no Trio; import-linter contract):
`geometry` (local metric projection), `kinematics` (time and speed along a segment), `course`
(a stage checked and prepared, `StageError`), `track` (fixes in fix-time order), `passes` (one
control's first pass after a time), `timing` (`evaluate_entry`, `settled_prefix`) and `ranking`
(`rank`). The engine that feeds them from the database hangs off the root nursery.
`processor.core` never imports this package (import-linter contract).
"""
