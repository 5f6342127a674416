"""Find the next break before a user does: install the newest versions that pyproject.toml allows
into a scratch venv (no lock), print which packages moved against constraints.txt, run the fast
tests (everything not marked e2e) there.

    python .ci/newest_versions.py [--venv /tmp/newest-venv] [--keep] [-- extra pytest args]

Exit status: pytest's. Refresh the lock after this passes with the moved versions:
`python .ci/newest_versions.py --write-lock` (writes constraints.txt from the scratch venv).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "constraints.txt"


def read_pins(text: str) -> dict[str, str]:
    """`name==version` lines -> {normalised name: version} (comments, editables and URLs skipped)."""
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line and not line.startswith("-"):
            name, version = line.split("==", 1)
            pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--venv", default="/tmp/raytune_ft-newest", help="scratch venv (made anew)")
    parser.add_argument("--keep", action="store_true", help="reuse the scratch venv if it exists")
    parser.add_argument("--write-lock", action="store_true",
                        help="after the tests pass, write the scratch venv's versions to constraints.txt")
    parser.add_argument("pytest_args", nargs="*", help="after --: passed to pytest (default: -m 'not e2e')")
    args = parser.parse_args(argv)
    venv = Path(args.venv)
    python = venv / "bin" / "python"
    if not (args.keep and python.exists()):
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
        # --upgrade-strategy eager: every dependency at the newest version the ranges allow
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--upgrade", "--upgrade-strategy", "eager",
                        "-e", f"{ROOT}[test]"], check=True)
    frozen = subprocess.run([str(python), "-m", "pip", "freeze", "--exclude-editable"], check=True,
                            capture_output=True, text=True).stdout
    newest, locked = read_pins(frozen), read_pins(LOCK.read_text()) if LOCK.exists() else {}
    moved = {n: (locked.get(n), v) for n, v in newest.items() if locked.get(n) != v}
    print(f"{len(moved)} package(s) differ from {LOCK.name}:")
    for name, (old, new) in sorted(moved.items()):
        print(f"  {name}: {old or '(not locked)'} -> {new}")
    for name in sorted(set(locked) - set(newest)):
        print(f"  {name}: {locked[name]} -> (not installed)")
    rc = subprocess.run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                         *(args.pytest_args or ["-m", "not e2e"])], cwd=ROOT).returncode
    print(f"fast tests on the newest versions: {'passed' if rc == 0 else f'FAILED (pytest exit {rc})'}")
    if rc == 0 and args.write_lock:
        LOCK.write_text(LOCK_HEADER + frozen)
        print(f"wrote {LOCK}")
    return rc


LOCK_HEADER = """\
# The versions the test suite last passed with, used by both README commands and .ci/run
# (pip install -c constraints.txt ...). Refresh: python .ci/newest_versions.py --write-lock
# (installs the newest versions pyproject.toml allows, runs the fast tests, writes this file),
# then run the whole suite with the new lock before committing it.
"""

if __name__ == "__main__":
    sys.exit(main())
