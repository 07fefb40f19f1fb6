"""The client API as a CI script uses it: the example in docs/client.md, run as written
against a project with a real master (`dirt serve`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from farm import MasterProcess

from dirt import client

DOC = Path(__file__).parent.parent / "docs" / "client.md"


def test_the_stable_names_exist():
    assert all(callable(getattr(client, name)) for name in client.__all__)


def test_the_documented_ci_script_runs(project, tmp_path):
    script = tmp_path / "ci.py"
    script.write_text(re.search(r"```python\n(.*?)```", DOC.read_text(), re.S).group(1))
    couch = client.connect(settings=project)
    client.add_host(couch, "local", "linux", local=True)
    master = MasterProcess(project.project, tmp_path / "serve.log")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DIRT_", "GITHUB_"))}
    env.update(DIRT_PROJECT=str(project.project), GITHUB_SHA="ab" * 20)
    try:
        done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                              text=True, timeout=120)
    finally:
        master.terminate(30)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ci-abababababab-1: 2 tasks submitted" in done.stdout
    assert "ci-abababababab-1: 2 success" in done.stdout
    assert "  echo@linux: success hello from dirt" in done.stdout
    record = client.get_record(couch, "ci-abababababab-1")
    assert record["submitter"] == "ci" and record["meta"]["revision"] == "ab" * 20
