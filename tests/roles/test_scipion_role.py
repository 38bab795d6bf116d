"""roles/scipion for real in a disposable Debian 12 root filesystem: Scipion 3 and its plugins from PyPI
(binaries off) on top of roles/cuda from the local vendor repository, Scipion's Python from the role's own
Miniforge (the installer's stand-in on 127.0.0.1, tests/support/conda_standin.py). The plugins' binary
targets go through the role's scipion-installb with the real scipion-app and plugin code. Then the Slurm
queue of the role's hosts.conf (generated from scipion_slurm_queues, owned by root): Scipion's own code
(pyworkflow's HostConfig, inside the root) fills SUBMIT_TEMPLATE exactly as it does for a protocol, and the
job runs on a local slurmctld + slurmd + munge. The multi-node Scipion queue tests are in
test_scipion_slurm.py."""

from __future__ import annotations

import configparser
import json
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support import rootfs
from tests.support.slurm import NODE, LocalSlurm

pytestmark = [pytest.mark.integration, pytest.mark.root]
REPO = Path(__file__).resolve().parents[2]
DEFAULTS = yaml.safe_load((REPO / "roles/scipion/defaults/main.yml").read_text())
PLUGINS = DEFAULTS["scipion_plugins"]
SCIPION = "/opt/scipion/scipion3"

# pyworkflow's own parsing and %-formatting of hosts.conf, run inside the root with Scipion's Python.
RENDER = """
import json, sys
from pyworkflow.protocol.hosts import HostConfig
host = HostConfig.load(sys.argv[1])["localhost"]
queues = host.queueSystem
with open(sys.argv[2]) as f:
    protocol = json.load(f)
queue_name, queue_params = next(iter(queues.queues.items()))
# Protocol.getSubmitDict(): the protocol's values updated with the queue parameters the user kept ...
protocol_dict = dict(protocol, JOB_QUEUE=queue_name)
protocol_dict.update({name: default for name, default, *_ in queue_params})
# ... and launch._launchLocal(): QUEUES_DEFAULT, then the protocol's dict, then JOB_COMMAND.
submit = dict(queues.queuesDefault)
submit.update(protocol_dict)
submit["JOB_COMMAND"] = protocol["JOB_COMMAND"]
with open(sys.argv[3], "w") as f:
    json.dump({"script": host.getSubmitTemplate() % submit, "submit": host.getSubmitCommand() % submit,
               "queues": list(queues.queues), "name": queues.name.get()}, f)
"""


def scipion_play(root: Path, repo, conda: dict) -> rootfs.PlaybookResult:
    extra = {"test_repo_url": repo.url, "test_repo_key": repo.key_url, **conda}
    return rootfs.run_playbook(
        root,
        REPO / "tests/roles/scipion.yml",
        extra_vars=extra,
        env={"ANSIBLE_ROLES_PATH": str(REPO / "roles")},
        timeout=1500,
    )


def as_user(root: Path, *argv: str) -> subprocess.CompletedProcess:
    return rootfs.run_in_root(root, "runuser", "-u", "ubuntu", "--", *argv, timeout=300)


@pytest.fixture(scope="module")
def scipion_root(tmp_path_factory, rootfs_tarball, vendor_apt_repo, miniforge_standin):
    parent = tmp_path_factory.mktemp("scipion-role")
    with rootfs.disposable(parent, rootfs_tarball) as root:
        first = scipion_play(root, vendor_apt_repo, miniforge_standin)
        second = scipion_play(root, vendor_apt_repo, miniforge_standin) if first.rc == 0 else None
        yield root, first, second


def test_role_installs_and_a_second_run_changes_nothing(scipion_root):
    _, first, second = scipion_root
    assert first.rc == 0, first.summary()
    installed = "scipion : Install Scipion with scipion-installer (virtualenv of the conda Python)"
    assert installed in first.changed_tasks
    assert "scipion : Run the Miniforge installer in batch mode" in first.changed_tasks
    assert second is not None and second.rc == 0, second.summary() if second else "first run failed"
    assert second.changed == 0, second.summary()


def test_printenv_works_and_carries_the_cuda_settings(scipion_root):
    root, _, _ = scipion_root
    result = as_user(root, SCIPION, "printenv")
    assert result.returncode == 0, result.stderr
    assert 'SCIPION_HOME="/opt/scipion"' in result.stdout
    assert 'CUDA_BIN="/usr/local/cuda/bin"' in result.stdout
    assert 'RELION_CUDA_LIB="/usr/local/cuda/lib64"' in result.stdout


def test_every_configured_plugin_imports_at_its_pinned_version(scipion_root):
    root, _, _ = scipion_root
    modules = [p["module"] for p in PLUGINS]
    code = f"import {', '.join(modules)}; print(len([{', '.join(modules)}]))"
    result = as_user(root, SCIPION, "python", "-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(len(PLUGINS))
    listing = rootfs.run_in_root(root, "/opt/scipion/.scipion3/bin/pip", "list", "--format", "json").stdout
    installed = {p["name"].lower(): p["version"] for p in json.loads(listing)}
    for plugin in PLUGINS:
        assert installed.get(plugin["name"]) == plugin["version"], plugin
    for name, version in DEFAULTS["scipion_core_packages"].items():
        assert installed.get(name) == version, name


def test_scipion_conf_points_at_the_cuda_role_toolkit(scipion_root):
    root, _, _ = scipion_root
    conf = configparser.RawConfigParser()
    conf.optionxform = str
    conf.read(root / "opt/scipion/config/scipion.conf")
    assert conf["PYWORKFLOW"]["CUDA_BIN"] == "/usr/local/cuda/bin"
    assert conf["PYWORKFLOW"]["CUDA_LIB"] == "/usr/local/cuda/lib64"
    assert conf["PYWORKFLOW"]["SCIPION_NOTIFY"] == "False"
    for key in ("RELION_CUDA_LIB", "MOTIONCOR_CUDA_LIB", "XMIPP_CUDA_LIB", "RESMAP_CUDA_LIB"):
        assert conf["PLUGINS"][key] == "/usr/local/cuda/lib64", key
    # the path resolves, through update-alternatives, to the toolkit the cuda role installed
    resolved = rootfs.run_in_root(root, "readlink", "-f", "/usr/local/cuda/lib64").stdout.strip()
    assert resolved == "/usr/local/cuda-12.6/targets/x86_64-linux/lib"


CONDA = "/opt/scipion/conda"
INSTALLB = "/opt/scipion/scipion-installb"
PYTHON = f"{CONDA}/envs/scipion-python/bin/python"
TARGETS = [t for p in PLUGINS for t in p["binaries"]]
FAKE_FLATPAK = "/usr/local/bin/flatpak"


# tasks/binaries.yml's PATH (scipion_installb_path), not this machine's
INSTALLB_PATH = "/usr/local/cuda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def installb(root: Path, *args: str) -> subprocess.CompletedProcess:
    """The role's wrapper, as the role runs it (the Scipion user, Scipion's Python, from /opt/scipion)."""
    wrapper = f"{PYTHON} {INSTALLB} /opt/scipion/scipion3 {shlex.join(args)}"
    script = f"cd /opt/scipion && PATH={INSTALLB_PATH} {wrapper}"
    return rootfs.run_in_root(root, "runuser", "-u", "ubuntu", "--", "sh", "-c", script, timeout=400)


def test_scipion_runs_on_the_roles_conda_python_not_the_os_python(scipion_root):
    root, _, _ = scipion_root
    probe = "import platform, sys; print(sys.base_prefix, platform.python_version())"
    result = as_user(root, "/opt/scipion/.scipion3/bin/python", "-c", probe)
    base, version = result.stdout.split()
    assert base == f"{CONDA}/envs/scipion-python"
    assert version.startswith(DEFAULTS["scipion_python_version"] + ".")
    os_python = rootfs.run_in_root(root, "python3", "-c", "import platform; print(platform.python_version())")
    assert not os_python.stdout.startswith(DEFAULTS["scipion_python_version"] + ".")  # Debian 12: 3.11
    # the launcher no longer needs an OS `python` (python-is-python3 is gone)
    shebang = (root / "opt/scipion/scipion3").read_text().splitlines()[0]
    assert shebang == "#!/opt/scipion/.scipion3/bin/python"
    assert not (root / "usr/bin/python").exists()
    history = (root / "opt/scipion/conda/envs/scipion-python/conda-meta/history").read_text()
    assert f"python={DEFAULTS['scipion_python_version']}" in history


def test_conda_plugins_get_the_roles_conda(scipion_root):
    root, _, _ = scipion_root
    conf = configparser.RawConfigParser()
    conf.optionxform = str
    conf.read(root / "opt/scipion/config/scipion.conf")
    activation = f'eval "$({CONDA}/bin/conda shell.bash hook)"'
    assert conf["PYWORKFLOW"]["CONDA_ACTIVATION_CMD"] == activation
    # what RELION 5, EMAN2, Gctf and Gautomatch prefix their conda commands with, read by their own code
    code = "import relion, eman2, gctf, gautomatch; print(gctf.Plugin.getCondaActivationCmd())"
    result = as_user(root, SCIPION, "python", "-c", code)
    # pwem's getCondaActivationCmd() appends "&&" so that the plugins chain their conda commands
    assert activation + "&&" in result.stdout.splitlines(), result.stdout + result.stderr
    works = as_user(root, "bash", "-c", f"{activation} && conda activate base && conda --version")
    assert works.returncode == 0 and works.stdout.startswith("conda "), works.stderr


def test_every_configured_binary_target_is_a_real_plugin_target(scipion_root):
    root, _, _ = scipion_root
    assert "xmipp3" in TARGETS and "xmipp" not in TARGETS
    checked = installb(root, "--check-only", "--timeout", "300", *TARGETS)
    assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr
    assert "targets found: " + ", ".join(TARGETS) in checked.stdout
    # the name the role used to configure: scipion3 itself says "Could not find target xmipp" and exits 0
    script = f"cd /opt/scipion && PATH={INSTALLB_PATH} ./scipion3 installb xmipp </dev/null"
    plain = as_user(root, "sh", "-c", script)
    assert plain.returncode == 0 and "ERROR: Could not find target xmipp" in plain.stdout
    wrong = installb(root, "--timeout", "300", "xmipp")
    assert wrong.returncode == 1
    assert "targets not defined by any installed plugin: xmipp (defined: " in wrong.stderr


def test_a_missing_program_fails_the_install_instead_of_skipping_it(scipion_root):
    """With binaries off the role installs no build packages, so csh is missing here: scipion-em-spider's
    own code refuses (needsProgs csh), scipion3 says "Could not find target spider" and exits 0; the wrapper
    fails. With binaries on, the role installs csh (scipion_binary_build_packages)."""
    root, _, _ = scipion_root
    assert rootfs.run_in_root(root, "sh", "-c", "command -v csh").returncode != 0
    result = installb(root, "--timeout", "300", "spider")
    assert result.returncode == 1
    assert "Cannot find necessary program: csh" in result.stderr
    assert "ERROR: Could not find target spider" in result.stderr
    assert "csh" in DEFAULTS["scipion_binary_build_packages"]


def binaries_play(root: Path, plugins: list[dict]) -> rootfs.PlaybookResult:
    return rootfs.run_playbook(
        root,
        REPO / "tests/roles/scipion-binaries.yml",
        extra_vars={"scipion_plugins": plugins, "scipion_plugin_binaries_jobs": 1},
        env={"ANSIBLE_ROLES_PATH": str(REPO / "roles")},
        timeout=600,
    )


def test_the_roles_binary_tasks_fail_on_a_wrong_target_and_on_a_skipped_install(scipion_root):
    """tasks/binaries.yml as a bake runs it: a target no plugin defines stops the role before anything is
    built; a target whose plugin refuses (spider without csh) fails the install task instead of exit 0."""
    root, _, _ = scipion_root
    xmipp = next(p for p in PLUGINS if p["name"] == "scipion-em-xmipp")
    wrong = binaries_play(root, [{**xmipp, "binaries": ["xmipp"]}])
    assert wrong.rc != 0
    assert any(t.startswith("scipion : Check every configured binary target") for t in wrong.failed_tasks)
    assert "targets not defined by any installed plugin: xmipp" in wrong.stdout
    spider = next(p for p in PLUGINS if p["name"] == "scipion-em-spider")
    skipped = binaries_play(root, [spider])
    assert skipped.rc != 0
    assert any(t.startswith("scipion : Install each plugin's binaries") for t in skipped.failed_tasks)
    assert "Cannot find necessary program: csh" in skipped.stdout


def test_an_interactive_plugin_fails_loudly_and_never_hangs(scipion_root):
    """scipion-em-chimera 4.0.1 for real: without ChimeraX installed for the user it asks input() on every
    installb; with stdin closed that is an error the wrapper reports, a hung helper is killed at the timeout,
    and with ChimeraX installed (what tasks/chimerax.yml arranges) its `chimera` target is defined.
    flatpak is the stand-in here (a script answering `flatpak info`), the plugin and scipion3 are real."""
    root, _, _ = scipion_root
    pip = as_user(root, "/opt/scipion/.scipion3/bin/pip", "install", "-q", "--disable-pip-version-check",
                  "-c", "/opt/scipion/constraints.txt", "scipion-em-chimera==4.0.1")  # fmt: skip
    assert pip.returncode == 0, pip.stderr
    flatpak = root / FAKE_FLATPAK.lstrip("/")
    try:
        flatpak.write_text("#!/bin/sh\n# stand-in: ChimeraX is not installed\nexit 1\n")
        flatpak.chmod(0o755)
        asked = installb(root, "--check-only", "--timeout", "300", *TARGETS)
        assert asked.returncode == 1
        assert "Error retrieving plugin chimera binaries:" in asked.stderr
        assert "EOF when reading a line" in asked.stderr

        flatpak.write_text("#!/bin/sh\n# stand-in: a flatpak that never answers\nexec sleep 5417\n")
        hung = installb(root, "--check-only", "--timeout", "30", *TARGETS)
        assert hung.returncode == 124
        assert "ran past 30" in hung.stderr
        assert "sleep 5417" not in rootfs.run_in_root(root, "ps", "-eo", "args").stdout

        flatpak.write_text('#!/bin/sh\n# stand-in: ChimeraX installed for this user\n[ "$1" = info ]\n')
        ready = installb(root, "--check-only", "--timeout", "300", *TARGETS, "chimera")
        assert ready.returncode == 0, ready.stdout[-3000:] + ready.stderr
    finally:
        flatpak.unlink(missing_ok=True)
        as_user(root, "/opt/scipion/.scipion3/bin/pip", "uninstall", "-q", "-y", "scipion-em-chimera")


def test_desktop_user_owns_the_writable_parts(scipion_root):
    root, _, _ = scipion_root
    for path in ("/opt/scipion/config/scipion.conf", "/opt/scipion/software/em"):
        owner = rootfs.run_in_root(root, "stat", "-c", "%U", path).stdout.strip()
        assert owner == "ubuntu", path
    # the plugin manager writes there as the desktop user
    assert as_user(root, "touch", "/opt/scipion/software/em/.writable").returncode == 0
    # hosts.conf is root's: neither the user nor pyworkflow's test helpers can rewrite the queues
    owner = rootfs.run_in_root(root, "stat", "-c", "%U %a", "/opt/scipion/config/hosts.conf").stdout.split()
    assert owner == ["root", "644"]
    assert as_user(root, "touch", "/opt/scipion/config/hosts.conf").returncode != 0


def test_cluster_check_plugin_imports_in_scipion(scipion_root):
    root, _, _ = scipion_root
    result = as_user(
        root,
        SCIPION,
        "python",
        "-c",
        "import scipioncloudcheck.protocols as p; print(p.ProtClusterCheck._label)",
    )
    assert result.returncode == 0, result.stderr
    assert "cluster check" in result.stdout


def test_launcher_uses_the_data_volume_and_virtualgl(scipion_root):
    root, _, _ = scipion_root
    desktop = (root / "usr/share/applications/scipion.desktop").read_text()
    assert "Exec=/opt/scipion/scipion-desktop" in desktop
    assert "Icon=/opt/scipion/.scipion3/" in desktop and desktop.rstrip().endswith("Education;")
    # VirtualGL from the vendor repository (already a source of the root through the cuda role)
    install = rootfs.run_in_root(root, "apt-get", "install", "-y", "-q", "virtualgl", timeout=300)
    assert install.returncode == 0, install.stderr
    script = (
        f"mount -t tmpfs -o mode=1777 tmpfs {root}/data && "
        f"chroot {root} runuser -u ubuntu -- env DISPLAY=:1 /opt/scipion/scipion-desktop run env"
    )
    (root / "data").mkdir(exist_ok=True)
    run = subprocess.run(rootfs.in_namespace(root, ["sh", "-c", script]), capture_output=True, text=True,
                         timeout=300, check=False)  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "SCIPION_USER_DATA=/data/ScipionUserData" in run.stdout
    assert "VGL_ISACTIVE=1" in run.stdout
    # without the volume: the default ~/ScipionUserData, and no vglrun without a display
    plain = as_user(root, "/opt/scipion/scipion-desktop", "run", "env")
    assert "SCIPION_USER_DATA=/data" not in plain.stdout and "VGL_ISACTIVE" not in plain.stdout


def test_slurm_queue_template_runs_a_job_as_scipion_submits_it(scipion_root, tmp_path):
    root, _, _ = scipion_root
    tmp_path.chmod(0o755)
    logs = tmp_path / "logs"
    logs.mkdir()
    result = tmp_path / "result.txt"
    protocol = {  # what Protocol.getSubmitDict() gives for a 1-MPI, 2-thread, 1-GPU run
        "JOB_NAME": "42",
        "JOB_NODES": 1,
        "JOB_THREADS": 2,
        "JOB_CORES": 2,
        "JOB_HOURS": 72,
        "GPU_COUNT": 1,
        "QUEUE_FOR_JOBS": "N",
        "PLUGIN_MODULE": "relion",
        "SCIPION_PROJECT": "TestProject",
        "SCIPION_PROTOCOL": "ProtRelionClassify2D",
        "JOB_SCRIPT": str(logs / "scipion42.job"),
        "JOB_LOGS": str(logs / "scipion42"),
        "JOB_NODEFILE": str(logs / "scipion42.nodefile"),
        "JOB_COMMAND": "echo scipion-job-ok cpus=$SLURM_CPUS_PER_TASK tasks=$SLURM_NTASKS > " + str(result),
    }
    (root / "tmp/render.py").write_text(RENDER)
    (root / "tmp/protocol.json").write_text(json.dumps(protocol))
    rendered = as_user(root, SCIPION, "python", "/tmp/render.py", "/opt/scipion/config/hosts.conf",
                       "/tmp/protocol.json", "/tmp/rendered.json")  # fmt: skip
    assert rendered.returncode == 0, rendered.stdout + rendered.stderr
    job = json.loads((root / "tmp/rendered.json").read_text())
    assert job["name"] == "SLURM" and job["queues"] == ["gpu"]
    script = Path(protocol["JOB_SCRIPT"])
    script.write_text(job["script"])
    assert "#SBATCH --gres=gpu:1" in job["script"] and "#SBATCH --mem=1000" in job["script"]
    assert "#SBATCH --nodes=1" in job["script"]
    assert shlex.split(job["submit"]) == ["sbatch", str(script)]

    with LocalSlurm(tmp_path / "slurm") as cluster:
        job_id = cluster.sbatch(script)
        state = cluster.wait(job_id)
        assert state == "COMPLETED", cluster.logs()
        details = cluster.run("scontrol", "show", "job", job_id).stdout
    assert "scipion-job-ok cpus=2 tasks=1" in (tmp_path / "result.txt").read_text()
    out = Path(protocol["JOB_LOGS"] + ".out").read_text()
    assert f"Scipion job {job_id} on " in out and "GPUs: 0" in out
    assert Path(protocol["JOB_NODEFILE"]).read_text().strip() == NODE
    assert (
        "JobName=scipion42" in details
        and "TimeLimit=01:00:00" in details
        and "MinMemoryNode=1000M" in details
    )


def test_version_record_names_scipion_and_plugins_as_pip_installed(scipion_root):
    """Provenance: the image's record (agent/version_info.py, read from outside) says what pip says."""
    from agent import version_info

    root, _, _ = scipion_root
    listing = rootfs.run_in_root(root, "/opt/scipion/.scipion3/bin/pip", "list", "--format", "json").stdout
    installed = {p["name"].lower(): p["version"] for p in json.loads(listing)}
    components = version_info.collect(root)["components"]
    assert components["scipion"]["scipion-pyworkflow"] == installed["scipion-pyworkflow"]
    assert components["scipion_plugins"] == {
        n: v for n, v in installed.items() if n.startswith("scipion-em-")
    }
    assert {p["name"] for p in PLUGINS} <= set(components["scipion_plugins"])
