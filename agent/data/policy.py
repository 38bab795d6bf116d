"""Per-project archive policy: a TOML file the agent reads (`[data] policy_file`), one table per project.

    [[project]]
    path = "/data/projects/apoferritin"     # the Scipion project folder
    bucket = "lab-movies"
    prefix = "archive/apoferritin/"          # objects are <prefix><movie's file name>
    storage_class = "GLACIER_IR"             # STANDARD_IA | GLACIER_IR | GLACIER | DEEP_ARCHIVE
    delay_min = 60                           # wait this long after alignment
    keep = ["*_keep*.tif"]                   # never archived (shell patterns on the movie's file name)

A movie the policy does not cover (its project is not listed, or a keep pattern matches) is never freed."""

from __future__ import annotations

import fnmatch
import sys
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

STORAGE_CLASSES = ("STANDARD_IA", "GLACIER_IR", "GLACIER", "DEEP_ARCHIVE")


class PolicyError(ValueError):
    pass


@dataclass(frozen=True)
class ProjectPolicy:
    name: str
    path: Path
    bucket: str
    prefix: str = ""
    storage_class: str = "GLACIER_IR"
    delay_min: float = 60.0
    keep: tuple[str, ...] = field(default_factory=tuple)

    def keeps(self, movie: Path) -> bool:
        return any(fnmatch.fnmatch(movie.name, pattern) for pattern in self.keep)

    def key_for(self, movie: Path) -> str:
        return (self.prefix.rstrip("/") + "/" if self.prefix else "") + movie.name


def from_dict(data: dict) -> dict[str, ProjectPolicy]:
    policies: dict[str, ProjectPolicy] = {}
    for i, entry in enumerate(data.get("project", [])):
        where = f"project #{i + 1}"
        unknown = set(entry) - {"path", "bucket", "prefix", "storage_class", "delay_min", "keep", "name"}
        if unknown:
            raise PolicyError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        if not isinstance(entry.get("path"), str) or not entry["path"].startswith("/"):
            raise PolicyError(f"{where}: path must be the project's absolute folder")
        if not isinstance(entry.get("bucket"), str) or not entry["bucket"]:
            raise PolicyError(f"{where}: bucket is required")
        storage_class = entry.get("storage_class", "GLACIER_IR")
        if storage_class not in STORAGE_CLASSES:
            raise PolicyError(f"{where}: storage_class must be one of {', '.join(STORAGE_CLASSES)}")
        delay = entry.get("delay_min", 60)
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or delay < 0:
            raise PolicyError(f"{where}: delay_min must be a number of minutes >= 0")
        keep = entry.get("keep", [])
        if not isinstance(keep, list) or not all(isinstance(k, str) for k in keep):
            raise PolicyError(f"{where}: keep must be a list of file name patterns")
        path = Path(entry["path"])
        name = entry.get("name") or path.name
        policies[name] = ProjectPolicy(
            name, path, entry["bucket"], entry.get("prefix", ""), storage_class, float(delay), tuple(keep)
        )
    return policies


def load(path: Path) -> dict[str, ProjectPolicy]:
    """Policies by project name; a missing file means no project is covered (nothing is ever freed)."""
    try:
        with open(path, "rb") as handle:
            return from_dict(tomllib.load(handle))
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{path}: not valid TOML: {exc}") from None
