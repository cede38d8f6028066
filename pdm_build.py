"""pdm-backend build hook: ship the SQL migrations inside the wheel.

`db/migrations/*.sql` lives at the top of the repository (the schema is not Python code), but an
installed processor has no repository around it: `processor migrate` in the container image finds
the files at `processor/migrations/` inside the package (see store/migrations.py). Editable
installs need nothing: they find `db/migrations` beside `src/`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pdm_build_update_files(context: Any, files: dict[str, Path]) -> None:
    if context.target != "wheel":
        return
    for path in sorted((Path(context.root) / "db" / "migrations").glob("*.sql")):
        files[f"processor/migrations/{path.name}"] = path
