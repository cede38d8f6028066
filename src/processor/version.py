"""The installed version of the processor (`processor --version`, `processor_build_info`).

Read from the package metadata, so it is the version the wheel was built with; a checkout that
was never installed says so rather than guessing.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = version("processor")
except PackageNotFoundError:  # pragma: no cover - running from an uninstalled source tree
    VERSION = "0+unknown"
