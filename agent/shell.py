"""The one way the agent runs a system tool (blkid, wipefs, mkfs, mount, findmnt, fuser): log the command,
give it a time limit, and turn a failure into an error that carries the tool's own words."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Sequence

log = logging.getLogger(__name__)


class CommandError(RuntimeError):
    """A tool failed; `stderr` holds what it said, `returncode` how it exited."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr.strip()
        super().__init__(f"{argv[0]} exited with {returncode}: {self.stderr or '(no message)'}")

    @property
    def first_line(self) -> str:
        """The tool's first line of complaint (mkfs.xfs follows it with its whole usage text)."""
        return next((line.strip() for line in self.stderr.splitlines() if line.strip()), "(no message)")


def run(
    argv: Sequence[str], *, ok: Sequence[int] = (0,), timeout: float = 60, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `argv` (never through a shell); exit codes outside `ok` raise CommandError."""
    log.debug("run: %s", " ".join(argv))
    try:
        result = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, input=input, check=False
        )
    except FileNotFoundError:
        raise CommandError(argv, 127, f"{argv[0]} is not installed (see tools/apt-packages.txt)") from None
    except subprocess.TimeoutExpired:
        raise CommandError(argv, 124, f"no answer within {timeout:g} s") from None
    if result.returncode not in ok:
        raise CommandError(argv, result.returncode, result.stderr or result.stdout)
    return result
