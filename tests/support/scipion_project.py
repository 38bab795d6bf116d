"""Real Scipion projects for the data tests, made by pyworkflow (PyPI scipion-pyworkflow) with the test
domain in tests/support/scipion_movies, registered as a plugin the way Scipion plugins are (an entry point in
group "pyworkflow.plugin"). Protocols run as pyworkflow runs them: `launchProtocol` starts
pyworkflow.apps.pw_protocol_run in a new process, which loads the project and the protocol class by name.

Each project is built by a child Python (the `SCRIPT` below), because pyworkflow reads its configuration
from the environment once per process."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

from tests.support.cluster_venvs import scipion_python

REPO = Path(__file__).resolve().parents[2]
PLUGIN = "tests.support.scipion_movies"

HOSTS_CONF = """[localhost]
PARALLEL_COMMAND = mpirun -np %_(JOB_NODES)d %_(COMMAND)s
NAME = SCIPION_LOCAL
ADDRESS = localhost
MPI_COMMAND = mpirun -np %_(JOB_NODES)d -bynode %_(COMMAND)s
QUEUE_SYSTEM = None
"""

SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    from pyworkflow.project import Manager
    from tests.support.scipion_movies.protocols import ProtAlignMoviesTest, ProtImportMoviesTest
    spec = json.loads(sys.argv[1])
    manager = Manager()
    project = manager.createProject(spec["name"], location=spec["location"])
    os.chdir(project.getPath())  # pyworkflow keeps paths relative to the project folder
    imp = project.newProtocol(ProtImportMoviesTest, filesPath=spec["movies"])
    project.launchProtocol(imp, wait=True)
    out = {"path": project.getPath(), "import": imp.getObjId(), "import_status": imp.getStatus()}
    for i, align in enumerate(spec["aligns"]):
        prot = project.newProtocol(ProtAlignMoviesTest, holdFile=align.get("hold", ""),
                                   produce=align.get("produce", True))
        prot.inputMovies.set(imp)
        prot.inputMovies.setExtended("outputMovies")
        project.launchProtocol(prot, wait=not align.get("hold"))
        if align.get("hold"):  # wait until pyworkflow says it runs (and its output, if any, is there)
            deadline = time.time() + 60
            while time.time() < deadline:
                project = manager.loadProject(spec["name"])
                prot = project.getProtocol(prot.getObjId())
                produced = not align.get("produce", True) or prot.hasAttribute("outputMicrographs")
                if prot.isActive() and produced:
                    break
                time.sleep(0.3)
        out.setdefault("aligns", []).append({"id": prot.getObjId(), "status": prot.getStatus()})
    with open(spec["result"], "w") as f:
        json.dump(out, f)
    """
)


def environment(base: Path) -> dict[str, str]:
    """SCIPION_* for a throwaway installation under `base`, and a dist-info that registers the plugin."""
    home, user_data, site = base / "scipion-home", base / "scipion-user", base / "plugin-site"
    (home / "config").mkdir(parents=True, exist_ok=True)
    (home / "config" / "hosts.conf").write_text(HOSTS_CONF)
    (user_data / "projects").mkdir(parents=True, exist_ok=True)
    dist = site / "scipioncloud_test_movies-0.1.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: scipioncloud-test-movies\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[pyworkflow.plugin]\n{PLUGIN} = {PLUGIN}\n")
    return {
        **os.environ,
        "SCIPION_HOME": str(home),
        "SCIPION_USER_DATA": str(user_data),
        "SCIPION_DOMAIN": PLUGIN,
        "SCIPION_PYTHON": str(scipion_python()),
        "PYTHONPATH": os.pathsep.join([str(REPO), str(site)]),
        "SCIPION_NOTIFY": "False",
    }


def make_project(base: Path, name: str, movies: Path, aligns: list[dict]) -> dict:
    """A project under base/projects/<name>: an import of `movies`, then one align protocol per entry of
    `aligns` ({"hold": path} keeps it running until the file goes; {"produce": False} makes no output)."""
    location = base / "projects"
    location.mkdir(parents=True, exist_ok=True)
    result, log = base / f"{name}.json", base / f"{name}.log"
    spec = {
        "name": name,
        "location": str(location),
        "movies": str(movies),
        "aligns": aligns,
        "result": str(result),
    }
    # Output to a file, not a pipe: a held protocol's process inherits it and would keep a pipe open.
    with log.open("w") as out:
        code = subprocess.run(
            [str(scipion_python()), "-c", SCRIPT, json.dumps(spec)],
            env=environment(base),
            cwd=base,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=180,
        ).returncode
    if code != 0:
        raise RuntimeError(f"pyworkflow failed: {log.read_text()[-3000:]}")
    return json.loads(result.read_text())
