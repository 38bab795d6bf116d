"""`scipioncloud bake`: turn an image definition (images/<image>.pkrvars.hcl + .yml) into an AMI.

Order of work, so that nothing costs money before every check passed: tools (packer, ansible-playbook) ->
AWS credentials and regions (STS GetCallerIdentity, EC2 DescribeRegions) -> a wheel of this repository for
the agent role -> `packer init` (Packer >= 1.7) -> `packer validate` -> `packer build` (output streamed live
and logged) -> IMDSv2-only on every AMI (boto3; Packer 1.6.6 has no imds_support) -> build/<image>-<time>.json
and a summary table. Packer runs through packer-py (module `packerpy`). This module is the Packer driver;
the `bake` command (scipioncloud/commands/bake.py) is an ordinary command around it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from rich.console import Console
from rich.table import Table

from agent.version_info import flat
from scipioncloud import instance_types, provenance, quotas, versions
from scipioncloud.aws import Aws
from scipioncloud.errors import OperationFailed

MIN_PACKER = (1, 6, 6)
INIT_PACKER = (1, 7, 0)  # first Packer with `packer init` and required_plugins
console = Console(highlight=False, stderr=True)  # Packer's live output; stdout keeps the result
REHEARSE_HINT = (
    "No AWS account yet? `make rehearse` bakes the same image offline against a local EC2 emulator "
    "(about 12 minutes, a few more the first time while it builds the Debian 12 root filesystem that "
    "stands in for Ubuntu)"
)


class BakeError(OperationFailed):
    """A bake step failed; the message says what to do next."""


@dataclass
class Image:
    name: str
    packer_vars: Path
    ansible_vars: Path


@dataclass
class BakeResult:
    image: str
    build_time: str
    region: str
    amis: dict[str, str] = field(default_factory=dict)
    imds: dict[str, str] = field(default_factory=dict)
    log: Path | None = None
    record: Path | None = None
    installed: dict[str, str] = field(default_factory=dict)  # component -> exact version, as installed


def repo_root(start: Path | None = None) -> Path:
    """The repository holding packer/ and images/: the current folder or the one this package came from."""
    for candidate in (start or Path.cwd(), Path(__file__).resolve().parent.parent):
        if (candidate / "packer").is_dir() and (candidate / "images").is_dir():
            return candidate.resolve()
    raise BakeError("cannot find packer/ and images/: run this from the ScipionCloud repository")


def known_images(repo: Path) -> list[str]:
    return sorted(p.name.removesuffix(".pkrvars.hcl") for p in (repo / "images").glob("*.pkrvars.hcl"))


def find_image(repo: Path, name: str) -> Image:
    known = known_images(repo)
    if name not in known:
        raise BakeError(f"unknown image {name!r}; known images: {', '.join(known)}")
    ansible_vars = repo / "images" / f"{name}.yml"
    if not ansible_vars.exists():
        raise BakeError(f"images/{name}.pkrvars.hcl has no Ansible vars file images/{name}.yml")
    return Image(name, repo / "images" / f"{name}.pkrvars.hcl", ansible_vars)


def image_setting(image: Image, name: str) -> str | None:
    """A plain `name = "value"` of the image's var file (e.g. the build instance type)."""
    match = re.search(rf'^\s*{name}\s*=\s*"([^"]*)"', image.packer_vars.read_text(), re.MULTILINE)
    return match.group(1) if match else None


def packer_path() -> str:
    path = shutil.which("packer")
    if not path:
        raise BakeError(
            "packer is not installed: install Packer >= 1.6.6 (https://developer.hashicorp.com/packer)"
        )
    return path


def packer_version(packer: str) -> tuple[int, ...]:
    out = subprocess.run([packer, "version"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"(\d+)\.(\d+)\.(\d+)", out)
    if not match:
        raise BakeError(f"cannot read the version of {packer}: {out.strip()!r}")
    return tuple(int(x) for x in match.groups())


def ansible_playbook() -> str:
    """The ansible-playbook installed with ScipionCloud (beside this interpreter), else the one on PATH.
    Packer gets it as a variable: nothing here changes this process's PATH."""
    beside = Path(sys.executable).parent / "ansible-playbook"
    return str(beside) if beside.exists() else (shutil.which("ansible-playbook") or "")


def check_tools() -> tuple[str, tuple[int, ...]]:
    packer = packer_path()
    version = packer_version(packer)
    if version < MIN_PACKER:
        raise BakeError(f"Packer {'.'.join(map(str, version))} is too old: install Packer >= 1.6.6")
    if not ansible_playbook():
        raise BakeError(
            "ansible-playbook is not installed: run `make setup` (it installs Ansible into .venv)"
        )
    return packer, version


def check_aws(aws: Aws, region: str, copy_to: list[str]) -> str:
    """Fail before anything costs money: credentials work and every region is enabled. Returns the account."""
    try:
        account = aws.client("sts", region).get_caller_identity()["Account"]
    except NoCredentialsError as e:
        raise BakeError(
            "no AWS credentials found: set AWS_PROFILE (or run `aws sso login`), or export "
            f"AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, then run make ami again. {REHEARSE_HINT}"
        ) from e
    except (BotoCoreError, ClientError) as e:
        raise BakeError(f"AWS rejected the credentials ({e}); check AWS_PROFILE or your keys") from e
    try:
        regions = aws.ec2(region).describe_regions()["Regions"]
    except (BotoCoreError, ClientError) as e:
        raise BakeError(
            f"cannot list EC2 regions in {region} ({e}); the credentials need ec2:DescribeRegions"
        ) from e
    enabled = {r["RegionName"] for r in regions}
    missing = [r for r in [region, *copy_to] if r not in enabled]
    if missing:
        raise BakeError(f"region(s) {', '.join(missing)} not enabled for account {account}; enabled: "
                        f"{', '.join(sorted(enabled))}")  # fmt: skip
    return account


def git_revision(repo: Path) -> str:
    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=False)
        return done.stdout.strip() if done.returncode == 0 else ""

    rev = git("rev-parse", "--short=12", "HEAD") or "unknown"
    return rev + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")


def build_wheel(repo: Path, out: Path) -> Path:
    """The wheel the agent role installs (dependencies come from PyPI on the build instance)."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("scipioncloud-*.whl"):
        old.unlink()
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(repo)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    wheels = list(out.glob("scipioncloud-*.whl"))
    if done.returncode != 0 or len(wheels) != 1:
        raise BakeError(f"building the agent wheel failed: {done.stderr.strip()[-2000:]}")
    return wheels[0]


def hcl(value: object) -> str:
    """A Python value as a Packer -var value (HCL): strings stay raw, lists and maps become HCL literals."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(json.dumps(str(v)) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {json.dumps(str(v))}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot pass {value!r} to Packer")


def unescape(text: str) -> str:
    return text.replace("%!(PACKER_COMMA)", ",").replace("\\n", "\n").replace("\\r", "")


class PackerOutput:
    """Reads Packer's machine-readable output from a pipe: writes every line to the log, shows the `ui`
    messages live, and keeps the artifact ids (region:ami pairs)."""

    def __init__(self, log: Path, show: bool = True):
        self.read_fd, self.write_fd = os.pipe()
        self.log_path = log
        self.show = show
        self.artifacts: list[str] = []
        self.errors: list[str] = []
        self.plain: list[str] = []  # lines outside the machine-readable format (validate's errors)
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        with os.fdopen(self.read_fd, "r", errors="replace") as pipe, self.log_path.open("a") as log:
            for line in pipe:
                self._line(line, log)

    def _line(self, line: str, log) -> None:
        """One machine-readable line (timestamp,target,type,data...): the log gets ui messages as text,
        since a person reads it, and anything else raw."""
        fields = line.rstrip("\n").split(",")
        if len(fields) < 5 or fields[2] != "ui":
            log.write(line)
        if len(fields) < 4:
            if line.strip():
                self.plain = [*self.plain[-19:], line.rstrip("\n")]
                if self.show:
                    console.print(line.rstrip("\n"), markup=False, soft_wrap=True)
        elif fields[2] == "ui" and len(fields) >= 5:
            message = unescape(",".join(fields[4:]))
            log.write(message.rstrip("\n") + "\n")
            if fields[3] == "error":
                self.errors.append(message)
            if self.show:
                console.print(message, markup=False, soft_wrap=True)
        elif fields[2] == "artifact" and len(fields) >= 6 and fields[4] == "id":
            self.artifacts.append(unescape(",".join(fields[5:])))
        log.flush()

    def close(self) -> None:
        """Call after Packer exited: closes our write end and waits for the reader."""
        os.close(self.write_fd)
        self.thread.join()

    def amis(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for artifact in self.artifacts:
            for pair in artifact.split(","):
                region, _, ami = pair.partition(":")
                if ami.startswith("ami-"):
                    found[region.strip()] = ami.strip()
        return found


def plugin_dir(repo: Path, out_dir: Path) -> Path:
    """The Packer plugin folder of this set of pins. Packer loads the highest installed version of a plugin
    whatever a template asks, so `packer init` and the build share a folder that holds only what
    packer/plugins/plugins.pkr.hcl pins (one folder per pin set: a changed pin never meets an old install)."""
    pins = (repo / "packer/plugins/plugins.pkr.hcl").read_bytes()
    return out_dir / "packer-plugins" / hashlib.sha256(pins).hexdigest()[:12]


def run_packer(packer: str, command: str, template: Path, log: Path, show: bool, **kwargs) -> PackerOutput:
    """One Packer command through packer-py, its output streamed into PackerOutput; raises on failure."""
    from packerpy import PackerExecutable

    output = PackerOutput(log, show)
    executable = PackerExecutable(packer, config={"stdout": output.write_fd, "stderr": output.write_fd})
    try:
        rc, _, _ = executable.execute_cmd(command, str(template), **kwargs)
    finally:
        output.close()
    if rc != 0:
        detail = "\n".join(output.errors[-5:] or output.plain[-10:])
        raise BakeError(f"packer {command} failed (exit {rc}); full log: {log}\n{detail}")
    return output


def set_imds_v2(aws: Aws, amis: dict[str, str]) -> dict[str, str]:
    """Require IMDSv2 on every AMI (instances launched from it get HttpTokens=required). Returns per region
    'v2.0' when the endpoint confirms it, else what happened."""
    state = {}
    for region, ami in amis.items():
        ec2 = aws.ec2(region)
        try:
            ec2.modify_image_attribute(ImageId=ami, ImdsSupport={"Value": "v2.0"})
        except (BotoCoreError, ClientError) as e:
            state[region] = f"failed: {e}"
            continue
        image = ec2.describe_images(ImageIds=[ami])["Images"][0]
        state[region] = image.get("ImdsSupport") or "v2.0 requested (not reported back by this endpoint)"
    return state


def summary(result: BakeResult, component_versions: dict[str, str]) -> Table:
    table = Table(title=f"{result.image} baked {result.build_time}")
    table.add_column("region")
    table.add_column("AMI")
    table.add_column("IMDS")
    for region, ami in result.amis.items():
        table.add_row(region, ami, result.imds.get(region, ""))
    for name, version in component_versions.items():
        table.add_row("", name, version)
    for name, version in result.installed.items():
        table.add_row("installed", name, version)
    return table


def packer_args(image: Image, variables: dict[str, object]) -> dict:
    # layering: packer/ defaults < the image's var file < the driver's -var values (written last, win)
    return {"var_file": str(image.packer_vars), "var": {k: hcl(v) for k, v in variables.items()}}


def validate_image(repo: Path, image: Image, packer: str, log: Path, overrides: dict) -> None:
    variables = {
        "ansible_vars_file": str(image.ansible_vars),
        "agent_wheel": str(repo / "build/dist/scipioncloud.whl"),  # validate does not open it
        "ansible_playbook": ansible_playbook(),
        **overrides,
    }
    run_packer(packer, "validate", repo / "packer", log, False, **packer_args(image, variables))
    done = subprocess.run(
        [ansible_playbook(), "--syntax-check", "-i", "localhost,", "-e", f"@{image.ansible_vars}",
         str(repo / "roles/site.yml"), str(repo / "roles/sysprep.yml")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise BakeError(f"ansible-playbook --syntax-check failed for {image.name}:\n{done.stderr.strip()}")


def bake(
    aws: Aws,
    repo: Path,
    image: Image,
    *,
    region: str,
    copy_to: list[str],
    overrides: dict[str, object],
    out_dir: Path,
    show: bool = True,
) -> BakeResult:
    packer, version = check_tools()
    check_aws(aws, region, copy_to)
    build_type = str(overrides.get("instance_type") or image_setting(image, "instance_type") or "g4dn.xlarge")
    described = instance_types.describe(aws.ec2(region), build_type)
    quotas.require(aws, build_type, described.get("VCpuInfo", {}).get("DefaultVCpus", 0))
    build_time = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    out_dir.mkdir(parents=True, exist_ok=True)
    log = out_dir / f"{image.name}-{build_time}.packer.log"
    manifest = out_dir / f"{image.name}-{build_time}.manifest.json"
    version_info = out_dir / f"{image.name}-{build_time}.version-info.json"
    components = versions.component_versions(repo, image.name)
    variables: dict[str, object] = {
        "region": region,
        "ami_regions": [r for r in copy_to if r != region],
        "git_revision": git_revision(repo),
        "build_time": build_time,
        "ansible_vars_file": str(image.ansible_vars),
        "agent_wheel": str(build_wheel(repo, out_dir / "dist")),
        "component_versions": components,
        "manifest_path": str(manifest),
        "version_info_path": str(version_info),
        "version_info_expect": provenance.expected_components(image.ansible_vars),
        "ansible_playbook": ansible_playbook(),
        **overrides,
    }
    if version >= INIT_PACKER:
        os.environ["PACKER_PLUGIN_PATH"] = str(plugin_dir(repo, out_dir))
        run_packer(packer, "init", repo / "packer/plugins", log, show)
    run_packer(packer, "validate", repo / "packer", log, False, **packer_args(image, variables))
    output = run_packer(packer, "build", repo / "packer", log, show, color="false",
                        **packer_args(image, variables))  # fmt: skip
    result = BakeResult(image.name, build_time, region, output.amis(), log=log)
    if region not in result.amis:
        raise BakeError(f"packer build finished without an AMI in {region}; full log: {log}")
    result.imds = set_imds_v2(aws, result.amis)
    if not version_info.exists():
        raise BakeError(
            f"packer build finished without the image's version record {version_info}; log: {log}"
        )
    installed = provenance.load(version_info)
    provenance.tag_amis(aws, result.amis, provenance.tags(installed))
    result.installed = flat(installed)
    entries = json.loads(manifest.read_text()).get("builds", []) if manifest.exists() else []
    record = {
        "image": image.name,
        "build_time": build_time,
        "region": region,
        "amis": result.amis,
        "imds_support": result.imds,
        "git_revision": variables["git_revision"],
        "component_versions": components,
        "installed_versions": installed["components"],
        "version_info": str(version_info),
        "packer_version": ".".join(map(str, version)),
        "packer_log": str(log),
        "manifest": entries[-1] if entries else None,
    }
    result.record = out_dir / f"{image.name}-{build_time}.json"
    result.record.write_text(json.dumps(record, indent=2) + "\n")
    return result


def parse_vars(pairs: tuple[str, ...]) -> dict[str, object]:
    parsed: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not re.fullmatch(r"[a-z_][a-z0-9_]*", key):
            raise BakeError(f"--var wants NAME=VALUE with a Packer variable name, got {pair!r}")
        parsed[key] = value
    return parsed
