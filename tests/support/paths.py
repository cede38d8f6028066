"""The checkout's root, for tests that read the repository's own files (docs, deploy, ops): one
definition, so a test module can move between folders without counting parent directories."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
