"""Lint over every systemd unit the image gets, rendered with the roles' defaults: a unit whose program (or a
program it runs, such as the first-boot hooks) calls the network or the instance metadata service must
order after network-online.target and want it. `After=network.target` only means the interfaces were
configured, not that an address or a route exists: at boot, IMDS or user data fetched too early is lost."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

import jinja2
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ROLES = REPO / "roles"
# Programs the units run that no role copies from a file: the agent's package.
PROGRAM_SOURCES = {"/opt/scipioncloud/venv/bin/scipioncloud-agent": REPO / "agent"}
NETWORK = re.compile(
    r"169\.254\.169\.254|_imds|imds_url|IMDS_URL|urlopen|\bcurl\b|requests\.(get|put|post)|boto3"
)
JINJA = jinja2.Environment(autoescape=False, undefined=jinja2.StrictUndefined)  # noqa: S701 - unit files
JINJA.filters["bool"] = lambda v: str(v).lower() in ("1", "true", "yes")
JINJA.filters["regex_replace"] = lambda v, a, b="": re.sub(a, b, str(v))
JINJA.filters["int"] = lambda v: int(v)


def role_variables() -> dict:
    """Every role's defaults and vars, with their Jinja references resolved where they can be."""
    values: dict = {"ansible_managed": "Managed by Ansible"}
    for path in sorted(ROLES.glob("*/defaults/main.yml")) + sorted(ROLES.glob("*/vars/main.yml")):
        values.update(yaml.safe_load(path.read_text()) or {})
    for _ in range(5):
        for key, value in values.items():
            if isinstance(value, str) and "{{" in value:
                with contextlib.suppress(jinja2.exceptions.TemplateError):
                    values[key] = JINJA.from_string(value).render(**values)
    return values


VARS = role_variables()


def render(text: str) -> str:
    return JINJA.from_string(text).render(**VARS)


def installed_files() -> dict[str, Path]:
    """Destination on the machine -> source in the repository, for every copy/template task of a role."""
    found: dict[str, Path] = {}
    for tasks in ROLES.glob("*/tasks/*.yml"):
        role = tasks.parents[1]
        for task in yaml.safe_load(tasks.read_text()) or []:
            for module, folder in (
                ("ansible.builtin.copy", "files"),
                ("ansible.builtin.template", "templates"),
            ):
                args = task.get(module) if isinstance(task, dict) else None
                if not (isinstance(args, dict) and "src" in args and "dest" in args):
                    continue
                # a loop over literal items (the first-boot hooks) installs one file per item
                items = task.get("loop") if isinstance(task.get("loop"), list) else [None]
                for item in items:
                    try:
                        src = JINJA.from_string(args["src"]).render(**VARS, item=item)
                        dest = JINJA.from_string(args["dest"]).render(**VARS, item=item)
                    except jinja2.exceptions.TemplateError:
                        continue
                    found[dest] = role / folder / src
    return found


FILES = installed_files()


def units() -> dict[str, str]:
    rendered = {p.name: p.read_text() for p in (REPO / "systemd").glob("*.service")}
    for template in ROLES.glob("*/templates/*.service.j2"):
        rendered[template.name.removesuffix(".j2")] = render(template.read_text())
    return rendered


def source_text(source: Path) -> str:
    """A role file as installed: templates rendered with the roles' defaults where they can be."""
    text = source.read_text()
    if source.parent.name == "templates":
        with contextlib.suppress(jinja2.exceptions.TemplateError):
            return render(text)
    return text


def program_texts(unit: str) -> list[tuple[str, str]]:
    """(path, source text) of what the unit's ExecStart runs, plus what those programs run from folders
    other roles fill (first-boot hooks)."""
    paths = [
        p for line in unit.splitlines() if line.startswith("ExecStart") for p in re.findall(r"/\S+", line)
    ]
    texts = []
    for path in paths:
        if path in FILES:
            texts.append((path, source_text(FILES[path])))
        elif path in PROGRAM_SOURCES:
            texts += [(str(f), f.read_text()) for f in PROGRAM_SOURCES[path].rglob("*.py")]
    for _, text in list(texts):
        for dest, source in FILES.items():  # a program that runs every file of a folder runs these too
            folder = dest.rsplit("/", 1)[0]
            if f'{folder}"/*' in text or f"{folder}/*" in text:
                texts.append((dest, source_text(source)))
    for _, text in list(texts):  # a script (a hook) that runs the agent's command runs the agent's code
        for program, package in PROGRAM_SOURCES.items():
            if program in text and program not in paths:
                paths.append(program)
                texts += [(str(f), f.read_text()) for f in package.rglob("*.py")]
    return texts


def directive(unit: str, name: str) -> list[str]:
    return [
        w for line in unit.splitlines() if line.startswith(f"{name}=") for w in line.split("=", 1)[1].split()
    ]


UNITS = units()


@pytest.mark.parametrize("name", sorted(UNITS))
def test_units_that_use_the_network_wait_for_it(name):
    unit = UNITS[name]
    users = [path for path, text in program_texts(unit) if NETWORK.search(text)]
    if not users:
        return
    assert "network-online.target" in directive(unit, "After"), (
        f"{name} runs {users} but orders before the network"
    )
    assert "network-online.target" in directive(unit, "Wants"), (
        f"{name} runs {users} but does not pull the network"
    )


def test_the_lint_sees_the_programs_that_use_the_network():
    """The lint is not vacuous: it finds the first-boot hooks, the desktop's first boot and the agent."""
    flagged = {n for n, u in UNITS.items() if any(NETWORK.search(t) for _, t in program_texts(u))}
    assert {
        "scipioncloud-firstboot.service",
        "scipioncloud-desktop-firstboot.service",
        "scipioncloud-agent.service",
    } <= flagged
    assert "scipioncloud-websockify.service" not in flagged
