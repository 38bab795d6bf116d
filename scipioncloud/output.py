"""How commands speak: rich tables and messages on a terminal, one JSON document on stdout under --json
(messages then go nowhere, so scripts can parse stdout as is)."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterable, Sequence
from datetime import date, datetime
from typing import Any

from rich.console import Console
from rich.table import Table


def _default(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return str(value)


class Output:
    def __init__(self, as_json: bool = False) -> None:
        self.as_json = as_json
        self.out = Console(soft_wrap=True)
        self.err = Console(stderr=True, soft_wrap=True)

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
        table = Table(title=title)
        keys = []
        for key, header in columns:
            keys.append(key)
            table.add_column(header, overflow="fold")
        for row in rows:
            table.add_row(*("" if row.get(k) is None else str(row.get(k)) for k in keys))
        self.out.print(table)

    def error(self, message: str) -> None:
        """One line, on stderr; under --json also {"error": ...} on stdout for scripts."""
        if self.as_json:
            sys.stdout.write(json.dumps({"error": message}) + "\n")
        first = " ".join(message.split())
        self.err.print(f"error: {first}", highlight=False, markup=False)
