"""Agent configuration: a TOML file whose every key is optional (contract v1 in ARCHITECTURE.md)."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DEFAULT_PATH = Path("/etc/scipioncloud/agent.toml")
# The contract others import (the operator's CLI, the roles' tests) instead of restating it.
DEFAULT_BIND = "127.0.0.1:9777"
DEFAULT_PORT = int(DEFAULT_BIND.rsplit(":", 1)[1])
DEFAULT_TOKEN_FILE = Path("/etc/scipioncloud/agent.token")
# Mounting a volume: "never" mounts the filesystem it holds; "if-blank" formats it only when proven blank.
# The one default for the agent's CLI, its HTTP API and the operator's CLI: never format unless asked.
MOUNT_FORMATS = ("never", "if-blank")
DEFAULT_MOUNT_FORMAT = "never"


class ConfigError(ValueError):
    """The configuration file cannot be used; the message says which key and why."""


@dataclass(frozen=True)
class ServerConfig:
    bind: str = DEFAULT_BIND
    token_file: Path = DEFAULT_TOKEN_FILE
    threads: int = 8
    max_body_bytes: int = 64 * 1024
    # Open connections waitress accepts (its default, 100, lets 100 idle or slow clients lock everyone
    # out); each costs one file descriptor and no thread until its request is complete.
    connection_limit: int = 2000
    channel_timeout_s: int = 30  # an idle or trickling connection is closed after this long


@dataclass(frozen=True)
class GpuConfig:
    interval_s: float = 2.0
    call_timeout_s: float = 1.0  # one NVML sweep longer than this is abandoned and the sample marked stale


@dataclass(frozen=True)
class HostConfig:
    imds_url: str = "http://169.254.169.254"
    imds_timeout_s: float = 0.3
    interval_s: float = 2.0  # CPU utilisation is measured over this interval


@dataclass(frozen=True)
class StorageConfig:
    state_dir: Path = Path("/var/lib/scipioncloud")
    fstab: Path = Path("/etc/fstab")
    mount_roots: tuple[str, ...] = ("/data", "/mnt")
    include_loop: bool = False
    prewarm_auto: bool = True
    prewarm_rate_mb_s: float | None = None
    prewarm_used_only: bool = (
        True  # ext4/xfs: read only the blocks the filesystem uses (agent.volumes.prewarm_ranges)
    )
    # Mountpoints whose devices (and every device they sit on) are "root": never formatted, mounted,
    # unmounted or read by the agent. "/" always counts; list more here (e.g. "/boot/efi").
    protected_mounts: tuple[str, ...] = ("/",)
    aws_timeout_s: float = 2.0  # DescribeVolumeStatus: one short try, then report "unavailable"
    # Format an EBS volume whose origin AWS could not confirm (no ec2:DescribeVolumes), relying on the zero
    # samples alone. Off: such a volume is refused, since one restored from a snapshot may read zeros.
    format_unverified_ebs: bool = False


@dataclass(frozen=True)
class IdleConfig:
    gpu_util_pct: float = 5.0  # floats: a fraction of a minute must not be cut to 0 when read
    cpu_pct: float = 10.0
    window_min: float = 30.0
    action: str = "none"
    grace_min: float = 10.0
    check_interval_s: float = 10.0  # how often the idle rule looks; a 30-min window needs no more
    poweroff_command: str = "systemctl poweroff"  # run (split like a shell) after window + grace idle
    hibernate_command: str = "systemctl hibernate"  # action "hibernate", when /sys/power/state offers disk
    power_state_file: Path = Path("/sys/power/state")
    postpone_min: float = 60.0  # "keep running" postpones the action by this much
    input_idle_min: float = 10.0  # an SSH terminal or the desktop with input this recent is in use
    # Scipion projects: every folder holding project.sqlite under these (ScipionUserData/projects)
    project_dirs: tuple[str, ...] = ("/home/ubuntu/ScipionUserData/projects",)
    utmp_file: Path = Path("/run/utmp")  # who is logged in, as `w` reads it
    xauthority: Path = Path("~/.Xauthority")  # "~": the desktop user's home
    session_bus: str = ""  # the desktop session's D-Bus; "" = unix:path=/run/user/UID/bus of the desktop user
    notify_command: str = "notify-send"  # libnotify's client, run in the session for the warning
    # Each signal can be turned off (then it is not consulted at all).
    watch_gpu: bool = True
    watch_cpu: bool = True
    watch_scipion: bool = True
    watch_slurm: bool = True
    watch_inflight: bool = True
    watch_ssh: bool = True
    watch_desktop_input: bool = True
    watch_vnc_viewers: bool = False  # a connected viewer alone (no input) does not keep the machine on
    slurm_node: str = ""  # "" = this host's short name
    slurm_conf: str = ""  # "" = $SLURM_CONF or /etc/slurm/slurm.conf; without one, Slurm is not watched


@dataclass(frozen=True)
class UsageConfig:
    interval_s: float = 15.0  # how often usage is sampled and attributed
    price_per_hour: float | None = None  # the instance's price; None = the price table, by IMDS type
    prices_file: str = ""  # "" = the shipped price table (agent/prices.json, agent/prices.py)
    volume_type: str = "gp3"  # EBS type assumed for attached volumes when AWS does not say


@dataclass(frozen=True)
class DesktopConfig:
    user: str = "ubuntu"
    display: int = 1
    vnc: str = "turbovnc"
    # Who keeps the session alive: systemd (the role's unit) or the agent itself; auto = systemd when it is
    # PID 1 (containers and tests have no systemd).
    manager: str = "auto"
    unit: str = "scipioncloud-desktop.service"
    session_script: Path = Path("/usr/local/libexec/scipioncloud/desktop-session")
    env_file: Path = Path("/etc/scipioncloud/desktop.env")
    port: int = 0  # 0: 5900 + display
    passwd_file: Path = Path("~/.vnc/passwd")  # "~": the desktop user's home
    htpasswd_file: Path = Path("/etc/scipioncloud/desktop.htpasswd")
    info_file: Path = Path("/root/scipioncloud-desktop.txt")
    websockify: str = "127.0.0.1:6080"
    start_timeout_s: float = 30.0

    @property
    def vnc_port(self) -> int:
        return self.port or 5900 + self.display


@dataclass(frozen=True)
class DataConfig:
    """Movies (agent.data): archive policies, S3 prefixes followed into Scipion's import folders."""

    policy_file: Path = Path("/etc/scipioncloud/data-policy.toml")
    # "s3://BUCKET/PREFIX=/data/movies/incoming": new movies under the prefix land in that folder
    follow: tuple[str, ...] = ()
    interval_s: float = 30.0
    auto_archive: bool = False  # archive by policy on every look (otherwise on request)


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    gpu: GpuConfig = field(default_factory=GpuConfig)
    host: HostConfig = field(default_factory=HostConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    idle: IdleConfig = field(default_factory=IdleConfig)
    usage: UsageConfig = field(default_factory=UsageConfig)
    desktop: DesktopConfig = field(default_factory=DesktopConfig)
    data: DataConfig = field(default_factory=DataConfig)

    @property
    def bind_host(self) -> str:
        return split_bind(self.server.bind)[0]

    @property
    def bind_port(self) -> int:
        return split_bind(self.server.bind)[1]


CHOICES = {
    ("idle", "action"): ("none", "poweroff", "stop", "hibernate"),
    ("desktop", "vnc"): ("turbovnc", "tigervnc"),
    ("desktop", "manager"): ("auto", "systemd", "agent"),
}


def split_bind(bind: str) -> tuple[str, int]:
    """'127.0.0.1:9777' or '[::1]:9777' -> (host, port)."""
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"server.bind: expected HOST:PORT, got {bind!r}")
    return host.strip("[]"), int(port)


def _coerce(section: str, key: str, value: Any, default: Any) -> Any:
    where = f"{section}.{key}"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if isinstance(default, Path):
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: expected a path, got {value!r}")
        return Path(value)
    if isinstance(default, tuple):
        if (section, key) == ("data", "follow"):
            if not isinstance(value, list) or not all(isinstance(v, str) and "=/" in v for v in value):
                raise ConfigError(f'{where}: expected a list of "s3://BUCKET/PREFIX=/folder", got {value!r}')
            return tuple(value)
        if not isinstance(value, list) or not all(isinstance(v, str) and v.startswith("/") for v in value):
            raise ConfigError(f"{where}: expected a list of absolute paths, got {value!r}")
        return tuple(value)
    if isinstance(default, (int, float)) or default is None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"{where}: expected a non-negative number, got {value!r}")
        return type(default)(value) if default is not None else float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        allowed = CHOICES.get((section, key))
        if allowed and value not in allowed:
            raise ConfigError(f"{where}: expected one of {', '.join(allowed)}, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported value {value!r}")  # pragma: no cover


def from_dict(data: dict[str, Any]) -> Config:
    """Build a Config from parsed TOML; unknown sections and keys are errors (a typo must not pass)."""
    sections = {}
    defaults = Config()
    known = {f.name: f for f in dataclasses.fields(Config)}
    for name, values in data.items():
        if name not in known:
            raise ConfigError(f"unknown section [{name}]; known: {', '.join(known)}")
        if not isinstance(values, dict):
            raise ConfigError(f"[{name}] must be a table")
        current = getattr(defaults, name)
        fields = {f.name for f in dataclasses.fields(current)}
        changes = {}
        for key, value in values.items():
            if key not in fields:
                raise ConfigError(f"unknown key {name}.{key}; known: {', '.join(sorted(fields))}")
            changes[key] = _coerce(name, key, value, getattr(current, key))
        sections[name] = dataclasses.replace(current, **changes)
    config = dataclasses.replace(defaults, **sections)
    split_bind(config.server.bind)
    return config


def load(path: Path | str | None) -> Config:
    """Read the config file; a missing default file means all defaults, a missing named file is an error."""
    if path is None:
        if not DEFAULT_PATH.exists():
            return Config()
        path = DEFAULT_PATH
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return from_dict(data)
