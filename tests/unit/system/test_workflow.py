"""The Gitea workflow runs as written on a stock act_runner: no JavaScript action (the job
containers have no node), each job fetches the code with git, the tools are installed by the
README's commands, and the image is pushed on main and tags. actionlint checks the syntax and
expressions (`just lint`); this checks what actionlint cannot know."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.support.paths import ROOT

WORKFLOW = ROOT / ".gitea" / "workflows" / "build.yml"


def jobs() -> dict[str, str]:
    """Each job's text, by name (the file's fixed two-space layout)."""
    text = WORKFLOW.read_text()
    body = text[text.index("\njobs:\n") :]
    parts = re.split(r"^  ([a-z][a-z0-9_-]*):\n", body, flags=re.MULTILINE)[1:]
    return dict(zip(parts[::2], parts[1::2], strict=True))


def test_no_step_needs_node_in_the_job_container() -> None:
    assert not re.search(r"^\s*(-\s+)?uses:", WORKFLOW.read_text(), re.MULTILINE)


def test_every_job_runs_in_a_named_container_and_checks_out_this_commit_with_git() -> None:
    for name, job in jobs().items():
        assert re.search(r"^    container:", job, re.MULTILINE), name
        assert 'fetch -q --depth 1 origin "${{ github.sha }}"' in job, name
        assert "git checkout -q FETCH_HEAD" in job, name


def test_lint_and_test_run_the_readme_commands_with_every_engine_required() -> None:
    found = jobs()
    for name in ("lint", "test"):
        assert 'pip install -q "pdm[locked]==2.29.3" rust-just' in found[name], name
    assert "run: just lint" in found["lint"]
    assert "run: just test" in found["test"]
    assert 'TEST_ENGINES_REQUIRED: "1"' in found["test"]
    assert "TEST_SERVERS: containers" in found["test"]


def test_the_image_is_built_after_lint_and_test_and_pushed_per_commit_on_main() -> None:
    image = jobs()["image"]
    assert "needs: [lint, test]" in image
    assert "if: github.event_name == 'push'" in image
    assert 'buildah push "$IMAGE:${{ github.sha }}"' in image
    assert "refs/heads/main) tag=latest" in image
    on = WORKFLOW.read_text().split("\njobs:")[0]
    assert "branches: [main]" in on and 'tags: ["v*"]' in on


def test_actionlint_accepts_the_workflow() -> None:
    actionlint = Path(sys.executable).with_name("actionlint")
    assert actionlint.is_file(), "actionlint is missing: `just install` (pdm's lint group)"
    done = subprocess.run(
        [str(actionlint), str(WORKFLOW)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
