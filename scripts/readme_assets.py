"""Refresh the README's closing summary and docs/phase_grid.png from a real run.

Usage (from the project root)::

    python scripts/readme_assets.py [--workdir /tmp/fly64_readme]

Runs the embedded default study (``kedro run``: simulate, reconstruct, evaluate) in a
scratch copy of the project's configuration (``pyproject.toml``, ``conf/base``,
``conf/logging.yml``; your ``conf/local`` and ``data/`` are not used), without a
terminal at 100 columns, then

* replaces the text block between ``<!-- closing-summary:start -->`` and
  ``<!-- closing-summary:end -->`` in README.md with the run's closing summary;
* copies the run's ``data/08_reporting/phase_grid.png`` to ``docs/phase_grid.png``.

Run it after a change to what the study computes or how the summary looks, and commit
what it changed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PHASE_GRID = ROOT / "docs" / "phase_grid.png"
START, END = "<!-- closing-summary:start -->", "<!-- closing-summary:end -->"


def scratch_project(workdir: Path) -> Path:
    """A fresh runnable copy of the project's configuration under ``workdir``."""
    shutil.rmtree(workdir, ignore_errors=True)
    project = workdir / "project"
    (project / "src").mkdir(parents=True)
    (project / "conf" / "local").mkdir(parents=True)
    shutil.copy2(ROOT / "pyproject.toml", project)
    shutil.copytree(ROOT / "conf" / "base", project / "conf" / "base")
    shutil.copy2(ROOT / "conf" / "logging.yml", project / "conf")
    return project


def run_study(project: Path) -> list[str]:
    """``kedro run`` of the embedded study; its console, as lines."""
    env = {**os.environ, "KEDRO_DISABLE_TELEMETRY": "1", "COLUMNS": "100"}
    done = subprocess.run(
        [sys.executable, "-m", "kedro", "run"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    output = (done.stdout + done.stderr).splitlines()
    if done.returncode != 0:
        raise SystemExit("kedro run failed:\n" + "\n".join(output[-40:]))
    return output


def closing_summary(console: list[str]) -> list[str]:
    """The console's last lines, from the summary's first."""
    starts = [i for i, line in enumerate(console) if line.startswith("Run finished")]
    if not starts:
        raise SystemExit("no closing summary in the run's console")
    return console[starts[-1] :]


def replace_block(text: str, lines: list[str]) -> str:
    """``text`` with the block between the markers replaced by ``lines`` as code."""
    block = "\n".join([START, "```text", *lines, "```", END])
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no {START} ... {END} block")
    return pattern.sub(lambda _: block, text)


def main() -> None:
    """Run the study; update the README's block and docs/phase_grid.png."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/fly64_readme"))
    args = parser.parse_args()
    project = scratch_project(args.workdir)
    summary = closing_summary(run_study(project))
    README.write_text(replace_block(README.read_text(), summary))
    shutil.copy2(project / "data" / "08_reporting" / "phase_grid.png", PHASE_GRID)
    print("\n".join(summary))
    print(f"updated {README.name} and {PHASE_GRID.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
