"""The EC2 user data `scipioncloud launch` writes, and how the instance's first boot applies it: the agent
owns the format (what it accepts), the operator's CLI imports render() from here.

Format (version 1): plain text, first line exactly MARKER, then a TOML document with agent settings:

    #scipioncloud-agent v1
    [idle]
    action = "poweroff"
    window_min = 60
    grace_min = 10

Only the sections and keys in ALLOWED may appear (nothing that widens the agent's listening address or
moves its token). On first boot the agent role's hook runs `scipioncloud-agent userdata --config
/etc/scipioncloud/agent.toml`, which fetches the user data from IMDSv2 (at the config's `host.imds_url`),
merges these keys over the file's own and checks the result with the agent's config loader before
replacing it (`--file` applies a saved copy instead).
User data without the marker (e.g. a #cloud-config document) is left to cloud-init and ignored here.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from agent.config import ConfigError, from_dict

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

MARKER = "#scipioncloud-agent v1"
ALLOWED = {
    "idle": None,  # every key
    "desktop": None,
    "storage": {"prewarm_auto", "prewarm_rate_mb_s"},
}


class UserDataError(ValueError):
    """The user data is ours but unusable; the message names the key."""


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def to_toml(data: dict[str, dict[str, Any]]) -> str:
    """A TOML document of tables of scalars/lists (all the agent's config needs)."""
    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def check_allowed(settings: dict[str, dict[str, Any]]) -> None:
    for section, values in settings.items():
        if section not in ALLOWED:
            raise UserDataError(
                f"[{section}] may not be set through user data; allowed: {', '.join(ALLOWED)}"
            )
        keys = ALLOWED[section]
        for key in values:
            if keys is not None and key not in keys:
                raise UserDataError(f"{section}.{key} may not be set through user data")
    try:
        from_dict(settings)
    except ConfigError as exc:
        raise UserDataError(str(exc)) from None


def render(settings: dict[str, dict[str, Any]]) -> str:
    """User data text for these agent settings (checked with the agent's own loader)."""
    check_allowed(settings)
    return MARKER + "\n" + to_toml(settings)


def parse(text: str) -> dict[str, dict[str, Any]] | None:
    """Settings from user data; None when the user data is not ours."""
    first, _, rest = text.partition("\n")
    if first.strip() != MARKER:
        return None
    try:
        settings = tomllib.loads(rest)
    except tomllib.TOMLDecodeError as exc:
        raise UserDataError(f"user data after {MARKER!r} is not valid TOML: {exc}") from None
    check_allowed(settings)
    return settings


def merge(base: dict[str, dict[str, Any]], settings: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    merged = {section: dict(values) for section, values in base.items()}
    for section, values in settings.items():
        merged.setdefault(section, {}).update(values)
    return merged


def apply(user_data: str, config_path: Path) -> bool:
    """Merge our user data into the agent config file (atomically, mode kept); False when not ours."""
    settings = parse(user_data)
    if settings is None:
        return False
    base: dict = {}
    if config_path.exists():
        with config_path.open("rb") as handle:
            base = tomllib.load(handle)
    merged = merge(base, settings)
    try:
        from_dict(merged)
    except ConfigError as exc:
        raise UserDataError(f"{config_path} with the user data applied is invalid: {exc}") from None
    config_path.parent.mkdir(parents=True, exist_ok=True)
    mode = config_path.stat().st_mode & 0o777 if config_path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=config_path.parent, prefix=".agent.toml.")
    with os.fdopen(fd, "w") as handle:
        handle.write(to_toml(merged))
    os.chmod(tmp, mode)
    os.replace(tmp, config_path)
    return True
