"""The codebase stays ruff-clean: part of the test command so CI and developers run the same."""

import shutil
import subprocess
import sys
from pathlib import Path

from .conftest import ROOT


def test_ruff_is_clean():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is part of the test extras: pip install -e '.[test]'"
    result = subprocess.run([ruff, "check", "."], cwd=ROOT,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
