"""Locating `promtool` (Prometheus's checker). Missing is a failure with the fix, never a skip."""

from __future__ import annotations

import shutil


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, (
        "promtool not found on PATH: install it with `apt-get install -y prometheus` "
        "(Debian/Ubuntu; the package ships /usr/bin/promtool)"
    )
    return path
