"""What a Scipion project has done with each movie, read from pyworkflow's own sqlite files, read-only.

Why sqlite and not pyworkflow's API: the API needs every plugin whose protocols the project used importable
in the agent's Python; the files need nothing. The layout read here is pyworkflow's (scipion-pyworkflow
3.x, pyworkflow/mapper/sqlite.py): `project.sqlite` and each run's `Runs/<run>/logs/run.db` hold a table
`Objects(id, parent_id, name, classname, value, ...)`; a protocol is a row without parent, its attributes
are rows named "<id>.<attribute>" (status, workingDir, outputs such as "<id>.outputMicrographs" whose
"_mapperPath" child names the set's sqlite, input pointers with their "_extended" output name). A run's own
run.db is fresher than project.sqlite while it runs (pyworkflow copies it back later), so it wins. A set's
sqlite maps attribute names to columns in `Classes(label_property, column_name)`; items are rows of
`Objects`. Movies and micrographs are matched by `_micName` (pwem copies it from movie to micrograph)."""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

# pyworkflow.protocol.constants: STATUS_* of protocols that may still read their inputs.
ACTIVE = {"launched", "running", "scheduled", "waiting", "interactive"}


@dataclass
class Run:
    id: int
    classname: str
    status: str = "new"
    working_dir: str = ""
    inputs: list[tuple[int, str]] = field(default_factory=list)  # (protocol id, output name)
    outputs: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (set class, sqlite path)
    end_time: str = ""

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


@dataclass
class MovieState:
    path: Path  # the movie as the project names it (often a link in the import run's extra folder)
    real_path: Path  # the file the bytes are in
    mic_name: str
    aligned_by: list[int] = field(default_factory=list)  # runs whose output holds its micrograph
    aligned_at: float | None = None
    readers: list[int] = field(
        default_factory=list
    )  # active runs that read the movies and are not done with it


def connect_ro(path: Path) -> sqlite3.Connection:
    """Read-only (SQLite URI mode=ro): the agent never writes a project file."""
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)


def _rows(db: Path) -> list[tuple]:
    with closing(connect_ro(db)) as conn:
        return conn.execute("SELECT id, parent_id, name, classname, value FROM Objects").fetchall()


def _apply(runs: dict[int, Run], rows: list[tuple], only: int | None = None) -> None:
    for rid, parent, name, classname, _value in rows:
        is_run = parent is None and name in (None, "") and classname and rid != 1
        if is_run and (only is None or rid == only):
            runs.setdefault(rid, Run(rid, classname))
    children: dict[int, list[tuple]] = {}
    for row in rows:
        if row[1] is not None:
            children.setdefault(row[1], []).append(row)
    for run in runs.values():
        if only is not None and run.id != only:
            continue
        for rid, _parent, name, classname, value in children.get(run.id, []):
            attr = (name or "").split(".", 1)[-1]
            if attr == "status":
                run.status = value or run.status
            elif attr == "workingDir":
                run.working_dir = value or ""
            elif attr == "endTime":
                run.end_time = value or ""
            elif classname == "Pointer" and value:
                extended = next(
                    (c[4] for c in children.get(rid, []) if (c[2] or "").endswith("._extended")), ""
                )
                run.inputs.append((int(value), extended or ""))
            elif classname and classname.startswith("SetOf"):
                mapper = next(
                    (c[4] for c in children.get(rid, []) if (c[2] or "").endswith("._mapperPath")), ""
                )
                if mapper:
                    run.outputs[attr] = (classname, mapper.split(",")[0].strip())


class ProjectUnreadable(OSError):
    """Not a Scipion project, or its database cannot be read now."""


def read_runs(project: Path) -> dict[int, Run]:
    runs: dict[int, Run] = {}
    database = project / "project.sqlite"
    if not database.is_file():
        raise ProjectUnreadable(f"{project} is not a Scipion project (no project.sqlite)")
    try:
        rows = _rows(database)
    except sqlite3.Error as exc:
        raise ProjectUnreadable(f"cannot read {database}: {exc}") from None
    _apply(runs, rows)
    for run in list(runs.values()):
        run_db = project / run.working_dir / "logs" / "run.db" if run.working_dir else None
        if run_db and run_db.exists():
            fresh: dict[int, Run] = {run.id: Run(run.id, run.classname)}
            try:
                _apply(fresh, _rows(run_db), only=run.id)
            except sqlite3.Error:
                continue  # being written this instant: project.sqlite's view stands
            mine = fresh[run.id]
            run.status = mine.status if mine.status != "new" else run.status
            run.outputs.update(mine.outputs)
            run.end_time = mine.end_time or run.end_time
    return runs


def read_set(project: Path, sqlite_path: str) -> list[dict]:
    """Items of a pyworkflow set as {attribute: value} ("id" plus the _filename/_micName columns)."""
    path = project / sqlite_path
    with closing(connect_ro(path)) as conn:
        columns = dict(conn.execute("SELECT label_property, column_name FROM Classes").fetchall())
        wanted = {k: v for k, v in columns.items() if k in ("_filename", "_micName")}
        if not wanted:
            return []
        select = ", ".join(["id", *wanted.values()])
        items = []
        for row in conn.execute(f"SELECT {select} FROM Objects"):  # noqa: S608 - column names from the db
            items.append({"id": row[0], **dict(zip(wanted.keys(), row[1:], strict=True))})
    return items


def movie_states(project: Path) -> list[MovieState]:
    """Every movie of every SetOfMovies output in the project, with who aligned it and who still reads it."""
    project = Path(project)
    runs = read_runs(project)
    movies: dict[str, MovieState] = {}
    movie_sources: set[tuple[int, str]] = set()
    for run in runs.values():
        for name, (set_class, sqlite_path) in run.outputs.items():
            if set_class != "SetOfMovies":
                continue
            movie_sources.add((run.id, name))
            for item in read_set(project, sqlite_path):
                filename = item.get("_filename")
                if not filename:
                    continue
                path = Path(filename) if os.path.isabs(filename) else project / filename
                mic = item.get("_micName") or path.name
                movies.setdefault(mic, MovieState(path, Path(os.path.realpath(path)), mic))
    for run in runs.values():
        movie_runs = {run_id for run_id, _name in movie_sources}
        if not any(source_id in movie_runs for source_id, _name in run.inputs):
            continue
        done: dict[str, float] = {}
        for set_class, sqlite_path in run.outputs.values():
            if set_class != "SetOfMicrographs":
                continue
            try:
                stamp = (project / sqlite_path).stat().st_mtime
                for item in read_set(project, sqlite_path):
                    mic = item.get("_micName")
                    if mic:
                        done[mic] = stamp
            except (OSError, sqlite3.Error):
                continue
        for mic, movie in movies.items():
            if mic in done and (run.status == "finished" or run.active):
                # finished, or a streaming step done for this movie while the run goes on
                movie.aligned_by.append(run.id)
                movie.aligned_at = max(movie.aligned_at or 0, done[mic])
            elif run.active:
                movie.readers.append(run.id)
    return list(movies.values())
