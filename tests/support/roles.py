"""A role's defaults and templates rendered for a test without Ansible: defaults with overrides, every
"{{ ... }}" resolved (other roles' settings through their `| default(...)`), as Ansible would for the role
alone. Real Ansible runs are in tests/roles/test_roles.py; this is for what a unit test renders."""

from __future__ import annotations

from pathlib import Path

import jinja2
import yaml

from tests.support.paths import REPO

MANAGED = "Managed by Ansible (test rendering)"


def _environment() -> jinja2.Environment:
    return jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)  # noqa: S701 - config files, not HTML


def defaults(role: str, *, env: jinja2.Environment | None = None, **overrides) -> dict:
    """The role's defaults with `overrides`, every "{{ ... }}" resolved as Ansible would (with `env`'s
    filters when a role's defaults use some)."""
    values = {**yaml.safe_load((REPO / "roles" / role / "defaults/main.yml").read_text()), **overrides}
    env = env or _environment()
    for _ in range(5):
        changed = False
        for key, value in values.items():
            if isinstance(value, str) and "{{" in value:
                rendered = env.from_string(value).render(**values)
                changed |= rendered != value
                values[key] = rendered
        if not changed:
            break
    return values


def render(role: str, template: str, **overrides) -> str:
    source = (REPO / "roles" / role / "templates" / template).read_text()
    return _environment().from_string(source).render(ansible_managed=MANAGED, **defaults(role, **overrides))


def write(role: str, template: str, dest: Path, **overrides) -> Path:
    dest.write_text(render(role, template, **overrides))
    return dest
