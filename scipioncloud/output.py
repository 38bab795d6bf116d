"""How commands speak: rich tables and messages on a terminal, one JSON document on stdout under --json
(messages then go nowhere, so scripts can parse stdout as is)."""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from typing import Any

# rich is imported where it is first used: a command under --json never needs it, and it is a tenth of the
# CLI's start-up (python -X importtime), which a `data pull` pays once per run.


def _default(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return str(value)


class Output:
    def __init__(self, as_json: bool = False) -> None:
        self.as_json = as_json

    @functools.cached_property
    def out(self):
        from rich.console import Console

        return Console(soft_wrap=True)

    @functools.cached_property
    def err(self):
        from rich.console import Console

        return Console(stderr=True, soft_wrap=True)

    def info(self, message: str) -> None:
        """A line of narration (what is happening); silent under --json."""
        if not self.as_json:
            self.err.print(message, highlight=False, markup=False)

    def status(self, message: str):
        """A spinner with `message` while a slow step runs, on a terminal only (never under --json)."""
        if self.as_json or not self.err.is_terminal:
            self.info(message)
            return contextlib.nullcontext()
        return self.err.status(message)

    @contextlib.contextmanager
    def progress(self, label: str):
        """A percent bar for AWS work that reports progress (snapshots, image copies): yields
        report(percent) for one task, or report(percent, task=NAME) for several side by side. A bar on a
        terminal, a line per change when piped, nothing under --json."""
        if self.as_json:
            yield lambda _percent, task=label: None
            return
        if not self.err.is_terminal:
            last: dict[str, float | None] = {}

            def line(value, task=label):
                if value is not None and last.get(task) != value:
                    last[task] = value
                    self.err.print(f"{task}: {value:g}%", highlight=False, markup=False)

            yield line
            return
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

        with Progress(
            TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), console=self.err
        ) as bar:
            tasks: dict[str, int] = {}

            def report(value, task=label):
                if task not in tasks:
                    tasks[task] = bar.add_task(task, total=100)
                if value is not None:
                    bar.update(tasks[task], completed=value)

            yield report

    def emit(self, data: Any, *, text: str | None = None) -> None:
        """The command's result: JSON under --json, else `text` (or nothing when there is none)."""
        if self.as_json:
            sys.stdout.write(json.dumps(data, indent=2, default=_default) + "\n")
            sys.stdout.flush()
        elif text is not None:
            self.out.print(text, highlight=False)

    def table(
        self, rows: Sequence[dict], columns: Iterable[tuple[str, str]], *, title: str | None = None, data=None
    ) -> None:
        """Rows as a table; under --json the rows themselves (or `data` when given)."""
        if self.as_json:
            self.emit(rows if data is None else data)
            return
        if not self.out.is_terminal:
            self._plain(rows, list(columns))
            return
        from rich.table import Table

        table = Table(title=title)
        keys = []
        for key, header in columns:
            keys.append(key)
            table.add_column(header, overflow="fold")
        for row in rows:
            table.add_row(*("" if row.get(k) is None else str(row.get(k)) for k in keys))
        self.out.print(table)

    def _plain(self, rows: Sequence[dict], columns: list[tuple[str, str]]) -> None:
        """Piped output: a header and one whole line per row, columns padded, nothing folded or cut, so
        `grep`, `awk` and `cut` see whole ids."""
        cells = [[header for _, header in columns]]
        cells += [["-" if row.get(k) is None else str(row.get(k)) for k, _ in columns] for row in rows]
        widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
        for line in cells:
            text = "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True))
            sys.stdout.write(text.rstrip() + "\n")
        sys.stdout.flush()

    def error(self, message: str, **data: Any) -> None:
        """One line, on stderr; under --json also {"error": ..., **data} on stdout for scripts (the only
        document a failed command prints there)."""
        if self.as_json:
            sys.stdout.write(json.dumps({"error": message, **data}, default=_default) + "\n")
        first = " ".join(message.split())
        self.err.print(f"error: {first}", highlight=False, markup=False)
