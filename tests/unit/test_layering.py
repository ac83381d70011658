"""`shared/` is what the services share: it never imports a service (the operators' command
lives in services/ops/), and the installed `mail-ops` command answers --help on every verb."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_shared_imports_no_service() -> None:
    offenders = []
    for path in sorted((ROOT / "shared").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(ROOT)}: {name}" for name in names
                          if name == "services" or name.startswith("services.")]
    assert offenders == []


@pytest.mark.parametrize("verb", [[], ["accounts"], ["pause"], ["resume"], ["dead", "list"],
                                  ["dead", "show"], ["dead", "replay"], ["rotate-keys"]])
def test_mail_ops_is_installed_and_helps_on_every_verb(verb: list[str]) -> None:
    command = Path(sys.executable).parent / "mail-ops"
    assert command.exists(), "mail-ops is not installed in the venv (make venv)"
    result = subprocess.run([str(command), *verb, "--help"], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: mail-ops")
