"""The whole bake, offline: the real `scipioncloud bake` drives real Packer (amazon-ebs against a moto EC2
server on 127.0.0.1) whose real Ansible provisioner runs the real roles over SSH inside a disposable Debian 12
root filesystem (tests/support/sshd_target.py). Only the EC2 endpoint, the SSH target, verify_gpu (no GPU
here) and, through the template's `ansible_overrides_file`, the vendor repositories (NVIDIA's CUDA repository
-> the local signed stand-in on 127.0.0.1) and Scipion's plugin binaries (off: their sources are not
reachable here) are overridden, as are TurboVNC's and VirtualGL's repositories (local signed stand-ins).
Every other step runs as in a real bake: the desktop's units are enabled (not started: the bake's
scipioncloud_bake), vglserver_config runs (the stand-in writes the upstream's files), and apt's locks are
held past apt's default 60 s wait when Packer connects, as unattended-upgrades does on a fresh Ubuntu AMI."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import pytest

from tests.conftest import REPO, free_port
from tests.support import hygiene, processes, rootfs, sshd_target, systemd_boot
from tests.support.cloud_init_boot import CloudInitBoot
from tests.support.moto_server import CANONICAL

# The whole bake runs in the module fixture: minutes on an idle machine, far more on a shared, loaded one.
pytestmark = [pytest.mark.rehearsal, pytest.mark.root, pytest.mark.timeout(2700)]
IMAGE = "scipion-desktop"
HOME_REGION, COPY_REGION = "eu-west-1", "us-east-1"
LOCK_HELD_S = 70  # after Ansible's first task: longer than apt's default 60 s lock wait
CLOUD_INIT_WAIT_S = 3  # cloud-init's stages keep running this long after the bake starts waiting for them
SESSION_TRACES = (".vnc", ".Xauthority", ".ICEauthority", ".config/xfce4", ".dbus", "thumbnails")
COMMON_ONLY = ("jq", "tmux", "htop", "unzip", "rsync")  # roles/common installs them; the base has none
# What the rehearsal changes from a real bake, and the test that covers each changed step instead. Repository
# URLs and keys point at the signed local stand-ins (same package names and version shapes); nothing else.
COVERED_ELSEWHERE = {
    "nvidia_driver_cuda_repo_url": "tests/bake/test_apt_pins.py",
    "nvidia_driver_cuda_repo_key": "tests/bake/test_aptrepo.py",
    "cuda_repo_url": "tests/bake/test_apt_pins.py",
    "cuda_repo_key": "tests/bake/test_aptrepo.py",
    "desktop_turbovnc_repo_url": "tests/bake/test_apt_pins.py",
    "desktop_turbovnc_repo_key_url": "tests/bake/test_aptrepo.py",
    "desktop_virtualgl_repo_url": "tests/bake/test_apt_pins.py",
    "desktop_virtualgl_repo_key_url": "tests/bake/test_aptrepo.py",
    "scipion_plugin_binaries": "tests/roles/test_scipion_role.py",
    "verify_gpu": "tests/gpu/test_real_driver.py",  # make test-gpu, on a machine with an NVIDIA GPU
}


def host_fingerprint() -> dict[str, str]:
    """What a role run on the wrong machine would change first."""
    paths = [
        *map(Path, ["/etc/machine-id", "/etc/localtime", "/etc/timezone", "/etc/passwd"]),
        *sorted(Path("/etc/ssh").glob("ssh_host_*")),
        *sorted(Path("/etc/apt/apt.conf.d").glob("*")),
    ]
    found = {}
    for path in paths:
        try:
            found[str(path)] = (
                os.readlink(path) if path.is_symlink() else hashlib.sha256(path.read_bytes()).hexdigest()
            )
        except OSError:
            found[str(path)] = "missing"
    for path in ("/opt/scipioncloud", "/etc/scipioncloud", "/etc/systemd/system/scipioncloud-agent.service"):
        found[path] = str(Path(path).exists())
    return found


BOOT_UNITS = (
    "network-online.target",
    "scipioncloud-firstboot.service",
    "scipioncloud-desktop-firstboot.service",
    "scipioncloud-agent.service",
    "scipioncloud-websockify.service",
    "scipioncloud-desktop.service",
)
TIMES = ("ActiveEnterTimestampMonotonic", "ExecMainStartTimestampMonotonic", "ExecMainExitTimestampMonotonic",
         "InactiveExitTimestampMonotonic")  # fmt: skip


def boot_the_image(root: Path, work: Path) -> dict:
    """The baked root filesystem booted with its own systemd as PID 1 (tests/support/systemd_boot.py) until
    the agent serves and the desktop session has been started, then powered off."""
    systemd_boot.point_imds_at(root, f"http://127.0.0.1:{free_port()}")
    with systemd_boot.booted(root, work) as machine:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            agent = machine.show("scipioncloud-agent.service", "SubState").get("SubState")
            state = machine.show("scipioncloud-desktop-firstboot.service", "ActiveState")
            firstboot = state.get("ActiveState")
            desktop = machine.show("scipioncloud-desktop.service", "ExecMainStartTimestampMonotonic")
            desktop_started = int(desktop.get("ExecMainStartTimestampMonotonic") or 0) > 0
            if agent == "running" and firstboot in ("active", "failed") and desktop_started:
                break
            time.sleep(1)
        time.sleep(3)  # the session settles: running, or failing with its reason in the journal
        units = {u: machine.show(u, "ActiveState", "SubState", "Result", *TIMES) for u in BOOT_UNITS}
        journals = {
            unit: machine.run("journalctl", "-b", "--no-pager", "-o", "cat", "-u", unit).stdout
            for unit in ("scipioncloud-desktop-firstboot.service", "scipioncloud-desktop.service")
        }
        failed = machine.run("systemctl", "--failed", "--no-legend", "--plain").stdout
    return {"units": units, "journals": journals, "failed": failed, "console": machine.console()}


def release_after_ansible_starts(root: Path, holder, lock: dict) -> None:
    """Keep the apt locks until Ansible's first task has reached the build root (its temporary folder in
    the login user's home) and LOCK_HELD_S more, then release them, as a first-boot upgrade would."""
    deadline = time.monotonic() + 1800
    while not (root / "home/ubuntu/.ansible").exists():
        if time.monotonic() > deadline or holder.poll() is not None:
            return
        time.sleep(0.2)
    lock["ansible_started"] = time.time()
    time.sleep(LOCK_HELD_S)
    processes.stop(holder)
    lock["released"] = time.time()


@pytest.fixture(scope="module")
def rehearsal(
    tmp_path_factory,
    moto_server,
    rootfs_tarball,
    vendor_apt_repo,
    turbovnc_apt_repo,
    virtualgl_apt_repo,
    miniforge_standin,
):
    """One full bake; yields everything the tests look at."""
    moto_server.reset()
    work = tmp_path_factory.mktemp("rehearsal")
    overrides = work / "overrides.yml"
    overrides.write_text(
        json.dumps(  # JSON is YAML
            {
                "nvidia_driver_cuda_repo_url": vendor_apt_repo.url,
                "nvidia_driver_cuda_repo_key": vendor_apt_repo.key_url,
                "cuda_repo_url": vendor_apt_repo.url,
                "cuda_repo_key": vendor_apt_repo.key_url,
                "scipion_plugin_binaries": False,
                **miniforge_standin,  # Miniforge's installer: the stand-in on 127.0.0.1
                # conda's pip reads certifi: the system bundle holds this machine's proxy CA
                "scipion_pip_env": {"PIP_CERT": "/etc/ssl/certs/ca-certificates.crt"},
                "desktop_turbovnc_repo_url": turbovnc_apt_repo.url,
                "desktop_turbovnc_repo_key_url": turbovnc_apt_repo.key_url,
                "desktop_virtualgl_repo_url": virtualgl_apt_repo.url,
                "desktop_virtualgl_repo_key_url": virtualgl_apt_repo.key_url,
            }
        )
    )
    before = host_fingerprint()
    timings = {}
    with rootfs.disposable(work, rootfs_tarball) as root, rootfs.hold_apt_locks(root, 3600) as holder:
        lock = {}
        watcher = threading.Thread(
            target=release_after_ansible_starts, args=(root, holder, lock), daemon=True
        )
        watcher.start()
        boot, booted = CloudInitBoot(root), threading.Event()
        boot.start()  # cloud-init is still running its stages when Packer connects
        cloud_init = threading.Thread(
            target=boot.finish_after_waited, args=(CLOUD_INIT_WAIT_S, booted), daemon=True
        )
        cloud_init.start()
        target = sshd_target.start(root, work / "sshd", cloud_init=True)
        try:
            env = {**os.environ, **moto_server.env(HOME_REGION)}
            env.pop("AWS_PROFILE", None)
            argv = [
                str(Path(sys.executable).parent / "scipioncloud"), "bake", IMAGE,
                "--region", HOME_REGION, "--copy-to", COPY_REGION, "--out", str(work / "build"),
                "--var", f"custom_endpoint_ec2={moto_server.url}", "--var", "skip_aws_checks=true",
                "--var", "ssh_host=127.0.0.1", "--var", f"ssh_port={target.port}",
                "--var", "verify_gpu=false", "--var", f"ansible_overrides_file={overrides}",
            ]  # fmt: skip
            started = time.monotonic()
            bake = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=2400)
            timings["bake_s"] = time.monotonic() - started
        finally:
            target.stop()
            booted.set()
        watcher.join(5)
        cloud_init.join(5)
        records = sorted((work / "build").glob(f"{IMAGE}-*[0-9].json"))
        record = json.loads(records[-1].read_text()) if records else {}
        audit = hygiene.audit(root)
        wheel = next((work / "build/dist").glob("scipioncloud-*.whl"), None)
        started = time.monotonic()
        again = rootfs.run_playbook(
            root,
            REPO / "roles/site.yml",
            vars_files=[REPO / "images" / f"{IMAGE}.yml", overrides],
            extra_vars={"agent_wheel": str(wheel), "scipioncloud_bake": True},
        )
        timings["second_run_s"] = time.monotonic() - started
        home = sorted(str(p.relative_to(root)) for p in (root / "home/ubuntu").rglob("*"))
        info = root / "var/lib/dpkg/info"
        unpacked = {
            n: (info / f"{n}.list").stat().st_mtime for n in COMMON_ONLY if (info / f"{n}.list").exists()
        }
        started = time.monotonic()
        booted = boot_the_image(root, work / "boot")
        timings["boot_s"] = time.monotonic() - started
        yield {
            "bake": bake, "record": record, "audit": audit, "again": again, "root_log": target.log(),
            "booted": booted,
            "root": root, "lock": lock, "home": home,
            "unpacked": unpacked, "cloud_init": {**boot.times, "still_waiting": boot.still_waiting_at_done},
        }  # fmt: skip
    timings["total_s"] = sum(timings.values())
    print(f"\nrehearsal timings: {json.dumps({k: round(v, 1) for k, v in timings.items()})}")
    assert host_fingerprint() == before, "the rehearsal changed the machine running it"


def test_bake_succeeds_and_names_the_amis(rehearsal):
    bake, record = rehearsal["bake"], rehearsal["record"]
    assert bake.returncode == 0, bake.stdout[-6000:] + bake.stderr[-3000:]
    amis = record["amis"]
    assert set(amis) == {HOME_REGION, COPY_REGION}
    for region, ami in amis.items():
        assert ami.startswith("ami-")
        assert ami in bake.stdout and region in bake.stdout  # the summary table
    assert (
        record["manifest"]["artifact_id"]
        == f"{HOME_REGION}:{amis[HOME_REGION]},{COPY_REGION}:{amis[COPY_REGION]}"
    )
    assert record["manifest"]["custom_data"]["image"] == IMAGE
    assert Path(record["packer_log"]).exists()
    # the real roles ran through Packer's ansible provisioner, then the in-image verification
    log = Path(record["packer_log"]).read_text()
    assert "agent : Install the package into its venv" in log
    assert "reboot-if-required: systemd did not boot this root (chroot?), never rebooting from here" in log
    assert "verify-image: ok: CUDA toolkit /usr/local/cuda-12.6 is the default" in log
    assert "verify-image: ok: Scipion 3 runs as ubuntu" in log
    assert "verify-image: scipion-desktop verified" in log
    assert "sysprep : Assert the image holds no keys, ids or secrets" in log


def is_build_of(installed: str | None, pinned: str) -> bool:
    """TurboVNC's .deb version is VERSION-BUILD, BUILD the build date (its release/deb-control.in): the pin
    names the version, dpkg records the build that went in."""
    return bool(installed) and re.fullmatch(re.escape(pinned) + r"-\d{8}", installed) is not None


def test_amis_exist_in_both_regions_with_provenance_tags(rehearsal, moto_server):
    record = rehearsal["record"]
    assert record, rehearsal["bake"].stderr[-3000:]
    for region, ami in record["amis"].items():
        ec2 = boto3.client("ec2", region_name=region, **_moto_client_args(moto_server))
        (image,) = ec2.describe_images(ImageIds=[ami])["Images"]
        tags = {t["Key"]: t["Value"] for t in image.get("Tags", [])}
        assert tags["scipioncloud:image"] == IMAGE, tags
        assert tags["scipioncloud:version"] == "0.1.0"
        assert tags["scipioncloud:git"] == record["git_revision"] != "unknown"
        assert tags["scipioncloud:ubuntu"] == "24.04"  # the default base
        assert tags["scipioncloud:gpu"] == "required"  # what `scipioncloud launch` checks types against
        assert tags["scipioncloud:scipioncloud"] == record["component_versions"]["scipioncloud"]
        base = ec2.describe_images(ImageIds=[tags["scipioncloud:base-ami"]])["Images"][0]
        assert base["OwnerId"] == CANONICAL and "noble-24.04" in base["Name"]
        assert image["Name"].startswith(f"{IMAGE}-0.1.0-ubuntu-24.04-")
        snapshots = [m["Ebs"]["SnapshotId"] for m in image["BlockDeviceMappings"] if "Ebs" in m]
        assert snapshots, image["BlockDeviceMappings"]
        for snapshot in ec2.describe_snapshots(SnapshotIds=snapshots)["Snapshots"]:
            snap_tags = {t["Key"]: t["Value"] for t in snapshot.get("Tags", [])}
            assert snap_tags.get("scipioncloud:git") == record["git_revision"], (region, snap_tags)
            turbovnc = record["component_versions"]["desktop_turbovnc_version"]
            assert is_build_of(snap_tags.get("scipioncloud:installed:turbovnc"), turbovnc), (
                region,
                snap_tags,
            )
        # provenance: what went in, as the image itself recorded it (not only as pinned)
        pinned = record["component_versions"]
        assert is_build_of(tags["scipioncloud:installed:turbovnc"], pinned["desktop_turbovnc_version"])
        assert tags["scipioncloud:installed:nvidia-driver"].startswith(pinned["nvidia_driver_branch"] + ".")
        assert tags["scipioncloud:installed:cuda"].startswith(
            f"{pinned['cuda_versions']}={pinned['cuda_versions']}."
        )
        agent_version = record["component_versions"]["scipioncloud"]
        assert tags["scipioncloud:installed:scipioncloud-agent"] == agent_version
    # ModifyImageAttribute(ImdsSupport) was accepted; moto does not report it back (see docs/bake.md)
    assert set(record["imds_support"]) == {HOME_REGION, COPY_REGION}
    assert all(not v.startswith("failed") for v in record["imds_support"].values()), record["imds_support"]


def test_bake_record_carries_what_was_installed(rehearsal):
    record = rehearsal["record"]
    assert record, rehearsal["bake"].stderr[-3000:]
    installed = record["installed_versions"]
    pinned = record["component_versions"]
    assert is_build_of(installed["turbovnc"], pinned["desktop_turbovnc_version"])
    # NVIDIA's repository (the rehearsal's) names it cuda-drivers-<branch>, Ubuntu nvidia-driver-<branch>
    assert pinned["nvidia_driver_branch"] in installed["nvidia_driver"]["package"].split("-")
    assert installed["nvidia_driver"]["version"].startswith(pinned["nvidia_driver_branch"] + ".")
    assert set(installed["cuda"]) == {pinned["cuda_versions"]}
    plugins = installed["scipion_plugins"]
    for name, version in pinned.items():
        if name.startswith("scipion-em-"):
            assert plugins.get(name) == version, name
    assert installed["scipion"]["scipion-pyworkflow"] == pinned["scipion-pyworkflow"]
    info = json.loads(Path(record["version_info"]).read_text())  # downloaded from the image by Packer
    assert info["components"] == installed and "fio" in info["packages"]


def test_image_passes_the_hygiene_audit(rehearsal):
    assert rehearsal["bake"].returncode == 0
    assert rehearsal["audit"] == []


def test_second_ansible_run_changes_nothing(rehearsal):
    again = rehearsal["again"]
    assert again.rc == 0, again.summary()
    assert again.changed == 0, again.summary()


def _moto_client_args(moto_server) -> dict:
    env = moto_server.env()
    return {
        "endpoint_url": env["AWS_ENDPOINT_URL"],
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
        "aws_session_token": env["AWS_SESSION_TOKEN"],
    }


def test_bake_waited_for_the_apt_locks(rehearsal):
    """apt's and dpkg's locks were held from before Packer connected until 70 s after Ansible's first task,
    the bake's first package change came only after their release, and the bake passed: every apt task
    waits (site.yml's lock_timeout) instead of failing after apt's default 60 s."""
    assert rehearsal["bake"].returncode == 0, rehearsal["bake"].stdout[-3000:]
    lock = rehearsal["lock"]
    assert "ansible_started" in lock and "released" in lock, lock
    assert lock["released"] - lock["ansible_started"] >= LOCK_HELD_S
    # dpkg writes a package's file list when it unpacks it; these come from roles/common, not the base
    # (sysprep empties /var/log, so dpkg.log cannot tell)
    unpacked = rehearsal["unpacked"]
    assert unpacked, "none of roles/common's packages was unpacked during the bake"
    assert min(unpacked.values()) >= lock["released"] - 1, (unpacked, lock)


def test_bake_waited_for_cloud_init(rehearsal):
    """cloud-init's stages were still running when Packer connected (tests/support/cloud_init_boot.py; the
    real `cloud-init status` of the root filesystem reads them): roles/common's `cloud-init status --wait`
    waited CLOUD_INIT_WAIT_S until they finished, returned once they had, and no package was unpacked
    before."""
    assert rehearsal["bake"].returncode == 0, rehearsal["bake"].stdout[-3000:]
    times = rehearsal["cloud_init"]
    assert "waiter_seen" in times, f"roles/common never ran `cloud-init status --wait`: {times}"
    assert times["still_waiting"], "`cloud-init status --wait` returned while cloud-init was running"
    assert times["done"] - times["waiter_seen"] >= CLOUD_INIT_WAIT_S
    assert 0 <= times["waiter_gone"] - times["done"] < 30, times  # it saw "done" and returned
    unpacked = rehearsal["unpacked"]
    assert unpacked and min(unpacked.values()) >= times["done"] - 1, (unpacked, times)
    log = Path(rehearsal["record"]["packer_log"]).read_text()
    assert "TASK [common : Wait for cloud-init to finish]" in log


def test_desktop_enabled_not_started_and_gpu_access_decided(rehearsal):
    root = rehearsal["root"]
    wants = root / "etc/systemd/system/multi-user.target.wants"
    for unit in ("scipioncloud-desktop", "scipioncloud-websockify", "scipioncloud-desktop-firstboot"):
        assert os.readlink(wants / f"{unit}.service") == f"/etc/systemd/system/{unit}.service", unit
    # joined to a cluster later (a ParallelCluster login node), the desktop writes hosts.conf at boot
    path_unit = "/etc/systemd/system/scipioncloud-hosts-conf.path"
    assert os.readlink(wants / "scipioncloud-hosts-conf.path") == path_unit
    # nothing of a desktop session in the desktop user's home (as the second run left it; the bake's own
    # caches, ~/.cache of pip and matplotlib, are sysprep's: the hygiene audit checks them)
    session_traces = [p for p in rehearsal["home"] if any(t in p for t in SESSION_TRACES)]
    assert session_traces == [], session_traces
    # vglserver_config ran: the GPU devices go to vglusers, and vglusers holds exactly who needs the GPU
    conf = (root / "etc/modprobe.d/virtualgl.conf").read_text()
    gid = next(
        line.split(":")[2]
        for line in (root / "etc/group").read_text().splitlines()
        if line.startswith("vglusers:")
    )
    assert f"NVreg_DeviceFileGID={gid} NVreg_DeviceFileMode=0660" in conf
    members = next(
        line.split(":")[3]
        for line in (root / "etc/group").read_text().splitlines()
        if line.startswith("vglusers:")
    )
    accounts = {line.split(":")[0] for line in (root / "etc/passwd").read_text().splitlines()}
    expected = {"ubuntu"} | ({"nvidia-persistenced", "nvpd"} & accounts)
    assert set(members.split(",")) == expected
    # the second run (as a bake) asked systemd to start nothing
    doc = json.loads(rehearsal["again"].stdout[rehearsal["again"].stdout.find("{") :])
    states = [
        (task["task"]["name"], task["hosts"].get("rootfs", {}).get("invocation", {}).get("module_args", {}))
        for play in doc["plays"] for task in play["tasks"]
    ]  # fmt: skip
    started = [
        (name, args["state"]) for name, args in states if args.get("state") in ("started", "restarted")
    ]
    assert started == [], started


def test_every_step_the_rehearsal_changes_is_covered_by_another_test():
    source = Path(__file__).read_text()
    changed = set(
        re.findall(
            r'^\s+"(\w+)": (?:vendor_apt_repo|turbovnc_apt_repo|virtualgl_apt_repo|False|True)', source, re.M
        )
    )
    changed |= set(re.findall(r'"--var", "(\w+)=false"', source))
    assert changed == set(COVERED_ELSEWHERE), changed ^ set(COVERED_ELSEWHERE)
    for test in COVERED_ELSEWHERE.values():
        assert (REPO / test).exists(), test


def test_the_baked_image_boots_first_boot_then_agent_and_desktop(rehearsal):
    """systemd as PID 1 in the baked root filesystem: first boot after network-online.target and before the
    agent, which serves; then the desktop's first boot, and after it websockify and the desktop session.
    TurboVNC is the test repository's stand-in (tests/support/turbovnc_standin: TigerVNC behind TurboVNC's
    options), so the desktop's first boot makes a real VNC password and the session's Xvnc really starts;
    no scipioncloud unit may fail."""
    assert rehearsal["bake"].returncode == 0, rehearsal["bake"].stdout[-3000:]
    booted = rehearsal["booted"]
    units, console, journals = booted["units"], booted["console"], booted["journals"]
    assert "Powering off." in console, console[-2000:]

    def at(unit: str, prop: str) -> int:
        value = int(units[unit][prop] or 0)
        assert value > 0, (unit, prop, units[unit], console[-3000:])
        return value

    firstboot = units["scipioncloud-firstboot.service"]
    assert (firstboot["Result"], firstboot["ActiveState"]) == ("success", "active"), firstboot
    assert units["scipioncloud-agent.service"]["SubState"] == "running", units["scipioncloud-agent.service"]
    assert units["scipioncloud-websockify.service"]["SubState"] == "running"
    online = at("network-online.target", "ActiveEnterTimestampMonotonic")
    started = at("scipioncloud-firstboot.service", "ExecMainStartTimestampMonotonic")
    done = at("scipioncloud-firstboot.service", "ExecMainExitTimestampMonotonic")
    desktop_started = at("scipioncloud-desktop-firstboot.service", "ExecMainStartTimestampMonotonic")
    desktop_done = at("scipioncloud-desktop-firstboot.service", "ExecMainExitTimestampMonotonic")
    assert online <= started < done <= desktop_started < desktop_done
    assert done <= at("scipioncloud-agent.service", "ExecMainStartTimestampMonotonic")
    assert desktop_done <= at("scipioncloud-desktop.service", "InactiveExitTimestampMonotonic")
    # the desktop's first boot made the certificate and the VNC password; the session runs on them
    desktop_firstboot = journals["scipioncloud-desktop-firstboot.service"]
    assert units["scipioncloud-desktop-firstboot.service"]["Result"] == "success", desktop_firstboot[-2000:]
    assert "VNC password made for" in desktop_firstboot
    session = units["scipioncloud-desktop.service"]
    assert session["SubState"] == "running", (session, journals["scipioncloud-desktop.service"][-2000:])
    assert not [line for line in booted["failed"].splitlines() if "scipioncloud" in line], booted["failed"]
