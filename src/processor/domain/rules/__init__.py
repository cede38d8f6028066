"""The racing domain's pure core: timing rules with no I/O (no database, Redis, Trio or logging).

`model` is the shared vocabulary; `instants` the one microsecond rounding; `geometry` (local
metric projection), `kinematics` (time and speed along a segment), `course` (a stage checked
and prepared, `StageError`), `track` (fixes in fix-time order), `passes` (one control's first
pass after a time), `timing` (`evaluate_entry`, `settled_prefix`), `ranking` (`rank`), `zones`
(speed-zone violations) and `stops` (the stopped-car rule). An import contract keeps every module
of this package free of I/O, directly and indirectly.
"""
