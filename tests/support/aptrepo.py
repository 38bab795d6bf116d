"""FakeVendorAptRepo: a signed local apt repository on 127.0.0.1 standing in for the vendor repositories the
roles use in production (NVIDIA's CUDA repository, Ubuntu's NVIDIA driver packages, TurboVNC, VirtualGL).

It builds small .deb packages with the real package names (dpkg-deb), each installing plausible files
(an `nvcc` that prints a real-looking `--version`, an `nvidia-smi` that fails with "No devices were found"
like the real one on a machine without a GPU, `/opt/TurboVNC/bin/vncserver`, ...), indexes them with
dpkg-scanpackages, writes Release with apt-ftparchive, signs Release/InRelease with a throwaway gpg key and
serves the folder over HTTP. Real apt (inside the rehearsal root filesystem) installs from it.

    repo = FakeVendorAptRepo.build(tmp / "cuda")              # default package set, flat layout ("/")
    repo = FakeVendorAptRepo.build(tmp / "vnc", TURBOVNC_PACKAGES, suite="any", component="main")
    repo.url, repo.keyring_path, repo.key_url ...; repo.stop()

Nothing in here is real NVIDIA/TurboVNC software: the packages only carry names, versions, dependencies,
maintainer scripts and files shaped like the real ones, so the roles' apt logic (sources, keyrings, pins,
holds, alternatives) meets real apt and dpkg.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import http.server
import os
import shutil
import subprocess
import tempfile
import textwrap
import threading
from collections.abc import Iterable
from pathlib import Path

ARCH = "amd64"
GPG_UID = "ScipionCloud test vendor repository <test-repo@scipioncloud.invalid>"


@dataclasses.dataclass(frozen=True)
class Symlink:
    target: str


@dataclasses.dataclass(frozen=True)
class FakeDeb:
    """One package: control fields, files (path -> text, or Symlink), optional maintainer scripts."""

    name: str
    version: str
    files: dict[str, str | bytes | Symlink] = dataclasses.field(default_factory=dict)
    depends: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()
    architecture: str = ARCH
    section: str = "misc"
    description: str = ""
    postinst: str = ""
    prerm: str = ""
    executable_prefixes: tuple[str, ...] = ("/usr/bin/", "/usr/sbin/", "/opt/", "/usr/local/")

    def control(self) -> str:
        fields = {
            "Package": self.name,
            "Version": self.version,
            "Architecture": self.architecture,
            "Maintainer": "ScipionCloud tests <test-repo@scipioncloud.invalid>",
            "Section": self.section,
            "Priority": "optional",
            "Depends": ", ".join(self.depends),
            "Provides": ", ".join(self.provides),
            "Conflicts": ", ".join(self.conflicts),
            "Description": (self.description or f"stand-in for {self.name}")
            + "\n Test package built by tests/support/aptrepo.py; not the vendor's software.",
        }
        return "".join(f"{k}: {v}\n" for k, v in fields.items() if v)

    def build(self, out_dir: Path, work: Path) -> Path:
        root = work / f"{self.name}_{self.version}"
        (root / "DEBIAN").mkdir(parents=True)
        (root / "DEBIAN" / "control").write_text(self.control())
        for script, body in (("postinst", self.postinst), ("prerm", self.prerm)):
            if body:
                path = root / "DEBIAN" / script
                path.write_text("#!/bin/sh\nset -e\n" + textwrap.dedent(body).lstrip())
                path.chmod(0o755)
        for name, content in self.files.items():
            path = root / name.lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Symlink):
                path.symlink_to(content.target)
                continue
            if isinstance(content, bytes):
                path.write_bytes(content)
                path.chmod(0o644)
                continue
            path.write_text(content)
            executable = content.startswith("#!") or (
                name.startswith(self.executable_prefixes) and "/bin/" in name
            )
            path.chmod(0o755 if executable else 0o644)
        deb = out_dir / f"{self.name}_{self.version.replace(':', '%3a')}_{self.architecture}.deb"
        _run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-z1", "--build", str(root), str(deb)])
        shutil.rmtree(root)
        return deb


# ---------------------------------------------------------------------------------------------------------
# Default package sets, with the vendors' names and version shapes.

NVIDIA_SMI_NO_GPU = """#!/bin/sh
# Stand-in for nvidia-smi on a machine without an NVIDIA GPU: same message and exit status as the real one.
case "$1" in
  --version|-h|--help) echo "NVIDIA-SMI version  : {version}"; echo "DRIVER version     : {version}"; exit 0;;
esac
echo "No devices were found"
exit 9
"""

FABRICMANAGER_UNIT = """[Unit]
Description=NVIDIA fabric manager service

[Service]
Type=forking
ExecStart=/usr/bin/nv-fabricmanager -c /usr/share/nvidia/nvswitch/fabricmanager.cfg

[Install]
WantedBy=multi-user.target
"""

PERSISTENCED_UNIT = """[Unit]
Description=NVIDIA Persistence Daemon
Wants=syslog.target
StopWhenUnneeded=true
Before=systemd-backlight@backlight:nvidia_0.service

[Service]
Type=forking
ExecStart=/usr/bin/nvidia-persistenced --user nvidia-persistenced --no-persistence-mode --verbose
ExecStopPost=/bin/rm -rf /var/run/nvidia-persistenced

[Install]
WantedBy=multi-user.target
"""

# (branch, full version, CUDA version it reports) for the branches the test repository carries.
DRIVER_BRANCHES = (("570", "570.195.03", "12.8"), ("580", "580.95.05", "13.0"))
# (toolkit X.Y, full version, nvcc build line date, compiler build id)
CUDA_TOOLKITS = (
    ("12.4", "12.4.1", "Thu_Mar_28_02:18:24_PDT_2024", "34097967"),
    ("12.6", "12.6.3", "Wed_Oct_30_01:18:48_PDT_2024", "35059454"),
)


@functools.cache
def shared_library(soname: str, c_source: str) -> bytes:
    """A real (tiny) ELF shared object, so ldconfig and the dynamic loader treat it like the vendor's."""
    with tempfile.TemporaryDirectory(prefix="fake-so-") as tmp:
        out = Path(tmp) / soname
        argv = [
            "gcc",
            "-shared",
            "-fPIC",
            "-nostdlib",
            f"-Wl,-soname,{soname}",
            "-o",
            str(out),
            "-x",
            "c",
            "-",
        ]
        _run(argv, input=c_source)
        return out.read_bytes()


def _libcuda(version: str, cuda: str) -> bytes:
    major, minor = cuda.split(".")
    return shared_library(
        "libcuda.so.1",
        f"/* stand-in libcuda {version} */\n"
        f"int cuDriverGetVersion(int *v) {{ *v = {int(major) * 1000 + int(minor) * 10}; return 0; }}\n"
        "int cuInit(unsigned int flags) { (void)flags; return 100; /* CUDA_ERROR_NO_DEVICE */ }\n",
    )


def _libcudart(xy: str) -> bytes:
    major, minor = xy.split(".")
    return shared_library(
        f"libcudart.so.{major}",
        f"int cudaRuntimeGetVersion(int *v) {{ *v = {int(major) * 1000 + int(minor) * 10}; return 0; }}\n",
    )


def _driver_debian_style(branch: str, version: str, cuda: str) -> list[FakeDeb]:
    """CUDA repository for Debian (debian12/x86_64): Debian-style names, branch in the version."""
    deb_version = f"{version}-1"
    same = f"(= {deb_version})"
    lib = "/usr/lib/x86_64-linux-gnu"
    return [
        FakeDeb(
            f"cuda-drivers-{branch}",
            deb_version,
            depends=(
                f"nvidia-driver {same}",
                f"nvidia-kernel-dkms {same}",
                f"nvidia-persistenced {same}",
                f"libcuda1 {same}",
                f"nvidia-smi {same}",
            ),
            description=f"CUDA driver meta-package, branch {branch}",
        ),
        FakeDeb(
            "nvidia-driver",
            deb_version,
            depends=(f"nvidia-kernel-dkms {same}", f"nvidia-smi {same}", f"libcuda1 {same}"),
            files={"/usr/share/doc/nvidia-driver/VERSION": version + "\n"},
            description="NVIDIA metapackage",
        ),
        FakeDeb(
            "nvidia-kernel-dkms",
            deb_version,
            provides=("nvidia-kernel",),
            files={
                f"/usr/src/nvidia-{version}/dkms.conf": 'PACKAGE_NAME="nvidia"\n'
                f'PACKAGE_VERSION="{version}"\n'
                'BUILT_MODULE_NAME[0]="nvidia"\nDEST_MODULE_LOCATION[0]="/updates/dkms"\nAUTOINSTALL="yes"\n'
            },
            description="NVIDIA binary kernel module DKMS source",
        ),
        FakeDeb(
            "nvidia-smi",
            deb_version,
            files={"/usr/bin/nvidia-smi": NVIDIA_SMI_NO_GPU.format(version=version)},
            description="NVIDIA System Management Interface",
        ),
        FakeDeb(
            "libcuda1",
            deb_version,
            files={
                f"{lib}/libcuda.so.{version}": _libcuda(version, cuda),
                f"{lib}/libcuda.so.1": Symlink(f"libcuda.so.{version}"),
            },
            description="NVIDIA CUDA Driver Library",
        ),
        FakeDeb(
            "nvidia-persistenced",
            deb_version,
            files={
                "/usr/bin/nvidia-persistenced": "#!/bin/sh\necho 'nvidia-persistenced failed to initialize."
                " Check syslog for more details.' >&2\nexit 1\n",
                "/lib/systemd/system/nvidia-persistenced.service": PERSISTENCED_UNIT,
            },
            description="daemon to maintain persistent software state in the NVIDIA driver",
        ),
    ]


def _driver_ubuntu_style(branch: str, version: str, cuda: str) -> list[FakeDeb]:
    """Ubuntu archive's server-branch packages (nvidia-driver-<branch>-server and friends)."""
    v = f"{version}-0ubuntu0.24.04.1"
    same = f"(= {v})"
    srv = f"{branch}-server"
    lib = "/usr/lib/x86_64-linux-gnu"
    packages = [
        FakeDeb(
            f"nvidia-utils-{srv}",
            v,
            files={"/usr/bin/nvidia-smi": NVIDIA_SMI_NO_GPU.format(version=version)},
        ),
        FakeDeb(
            f"libnvidia-compute-{srv}",
            v,
            files={
                f"{lib}/libcuda.so.{version}": _libcuda(version, cuda),
                f"{lib}/libcuda.so.1": Symlink(f"libcuda.so.{version}"),
            },
        ),
        FakeDeb(
            f"nvidia-compute-utils-{srv}",
            v,
            files={
                "/usr/bin/nvidia-persistenced": "#!/bin/sh\nexit 1\n",
                "/lib/systemd/system/nvidia-persistenced.service": PERSISTENCED_UNIT,
            },
            # the daemon drops to this account (its unit's --user): it must keep access to /dev/nvidia*
            postinst="""
                getent passwd nvidia-persistenced >/dev/null || useradd --system --no-create-home \\
                  --home-dir /nonexistent --shell /usr/sbin/nologin nvidia-persistenced
                """,
        ),
    ]
    # Open kernel modules (required on Blackwell, NVIDIA's default from Turing on): the same user space,
    # "-open" names for what holds or builds the kernel module.
    for suffix, kmod in (("", "nvidia"), ("-open", "nvidia-open")):
        packages += [
            FakeDeb(
                f"nvidia-driver-{srv}{suffix}",
                v,
                depends=(
                    f"nvidia-utils-{srv} {same}",
                    f"libnvidia-compute-{srv} {same}",
                    f"nvidia-compute-utils-{srv} {same}",
                    f"nvidia-dkms-{srv}{suffix} {same} | linux-modules-nvidia-{srv}{suffix}-aws",
                ),
                description=f"NVIDIA driver metapackage, server branch {branch}{suffix}",
            ),
            FakeDeb(
                f"nvidia-headless-no-dkms-{srv}{suffix}",
                v,
                depends=(f"libnvidia-compute-{srv} {same}", f"nvidia-compute-utils-{srv} {same}"),
                description=f"NVIDIA headless metapackage, no DKMS, server branch {branch}{suffix}",
            ),
            FakeDeb(
                f"nvidia-headless-{srv}{suffix}",
                v,
                depends=(
                    f"nvidia-headless-no-dkms-{srv}{suffix} {same}",
                    f"nvidia-dkms-{srv}{suffix} {same}",
                ),
                description=f"NVIDIA headless metapackage with DKMS, server branch {branch}{suffix}",
            ),
            FakeDeb(
                f"nvidia-dkms-{srv}{suffix}",
                v,
                files={f"/usr/src/{kmod}-srv-{version}/dkms.conf": f"PACKAGE_NAME={kmod}\n"},
            ),
            *_precompiled_modules(f"{srv}{suffix}", f"{branch}-server", version),
        ]
    packages.append(
        FakeDeb(
            f"nvidia-kernel-common-{srv}",
            v,
            provides=(f"nvidia-kernel-common-{srv}-{version}",),
            files={f"/usr/share/doc/nvidia-kernel-common-{srv}/VERSION": version + "\n"},
        )
    )
    # NVSwitch systems (p4d, p5, p5e, p6-b200): Ubuntu's fabric-manager-<branch> source, same version shape.
    packages.append(
        FakeDeb(
            f"nvidia-fabricmanager-{branch}",
            v,
            depends=(f"nvidia-kernel-common-{srv}-{version}",),
            files={
                "/usr/bin/nv-fabricmanager": "#!/bin/sh\necho 'stand-in: no NVSwitch found' >&2\nexit 1\n",
                "/lib/systemd/system/nvidia-fabricmanager.service": FABRICMANAGER_UNIT,
            },
            description="Fabric Manager for NVSwitch based systems.",
        )
    )
    return packages


# Ubuntu's precompiled modules (source linux-restricted-modules-aws) are versioned like the kernel ABI they
# were built for, not like the driver: linux-modules-nvidia-580-server-open-aws (6.8.0-1036.38) depends on
# linux-modules-nvidia-580-server-open-6.8.0-1036-aws (= 6.8.0-1036.38) and
# nvidia-kernel-common-580-server (>= 580.x). An apt pin on "580.*" can never match them.
KERNEL_ABI = ("6.8.0-1036", "38")


def _precompiled_modules(name: str, common: str, version: str) -> list[FakeDeb]:
    abi, upload = KERNEL_ABI
    kernel_version = f"{abi}.{upload}"
    per_kernel = f"linux-modules-nvidia-{name}-{abi}-aws"
    return [
        FakeDeb(
            f"linux-modules-nvidia-{name}-aws",
            kernel_version,
            depends=(f"{per_kernel} (= {kernel_version})", f"nvidia-kernel-common-{common} (>= {version})"),
            description=f"Extra drivers for nvidia-{name} for the aws flavour",
        ),
        FakeDeb(
            per_kernel,
            kernel_version,
            files={f"/lib/modules/{abi}-aws/kernel/nvidia-{name}/VERSION": version + "\n"},
            description=f"Linux kernel nvidia modules for version {abi}",
        ),
    ]


def _nvcc(xy: str, full: str, built: str, build_id: str) -> str:
    return f"""#!/bin/sh
# Stand-in for nvcc {full}: answers --version like the real compiler, compiles nothing.
if [ "$1" = "--version" ] || [ "$1" = "-V" ]; then
  echo "nvcc: NVIDIA (R) Cuda compiler driver"
  echo "Copyright (c) 2005-{built[-4:]} NVIDIA Corporation"
  echo "Built on {built}"
  echo "Cuda compilation tools, release {xy}, V{full}"
  echo "Build cuda_{xy}.r{xy}/compiler.{build_id}_0"
  exit 0
fi
echo "nvcc fatal   : this is the test repository's stand-in nvcc; it cannot compile" >&2
exit 1
"""


def _cuda_toolkit(xy: str, full: str, built: str, build_id: str) -> list[FakeDeb]:
    dash = xy.replace(".", "-")
    prefix = f"/usr/local/cuda-{xy}"
    version = f"{full}-1"
    priority = xy.replace(".", "")
    major = xy.split(".")[0]
    return [
        FakeDeb(
            f"cuda-toolkit-{dash}",
            version,
            depends=(
                f"cuda-nvcc-{dash} (>= {full})",
                f"cuda-cudart-{dash} (>= {full})",
                f"cuda-toolkit-{dash}-config-common (>= {full})",
            ),
            description=f"CUDA Toolkit {xy} meta-package",
        ),
        FakeDeb(
            f"cuda-nvcc-{dash}",
            version,
            files={
                f"{prefix}/bin/nvcc": _nvcc(xy, full, built, build_id),
                f"{prefix}/version.json": f'{{"cuda": {{"name": "CUDA SDK", "version": "{full}"}}}}\n',
            },
        ),
        FakeDeb(
            f"cuda-cudart-{dash}",
            version,
            files={
                f"{prefix}/targets/x86_64-linux/lib/libcudart.so.{full}": _libcudart(xy),
                f"{prefix}/targets/x86_64-linux/lib/libcudart.so.{major}": Symlink(f"libcudart.so.{full}"),
                f"{prefix}/lib64": Symlink("targets/x86_64-linux/lib"),
            },
        ),
        FakeDeb(
            # Like the real packages: installing a toolkit registers /usr/local/cuda and /usr/local/cuda-X.
            f"cuda-toolkit-{dash}-config-common",
            version,
            architecture="all",
            postinst=f"""
                update-alternatives --install /usr/local/cuda cuda {prefix} {priority}
                update-alternatives --install /usr/local/cuda-{major} cuda-{major} {prefix} {priority}
                """,
            prerm=f"""
                if [ "$1" = remove ]; then
                  update-alternatives --remove cuda {prefix}
                  update-alternatives --remove cuda-{major} {prefix}
                fi
                """,
        ),
    ]


def _cuda_keyring(keyring: bytes) -> FakeDeb:
    return FakeDeb(
        "cuda-keyring",
        "1.1-1",
        architecture="all",
        files={"/usr/share/keyrings/cuda-archive-keyring.gpg": keyring.decode("latin-1")},
        description="NVIDIA CUDA repository keyring (this test repository's key)",
    )


def nvidia_packages() -> list[FakeDeb]:
    """NVIDIA's CUDA repository (Debian-style driver names) plus Ubuntu's server-branch driver names."""
    packages: list[FakeDeb] = []
    for branch, version, cuda in DRIVER_BRANCHES:
        packages += _driver_debian_style(branch, version, cuda) + _driver_ubuntu_style(branch, version, cuda)
    newest = DRIVER_BRANCHES[-1]
    packages.append(
        FakeDeb("cuda-drivers", f"{newest[1]}-1", depends=(f"cuda-drivers-{newest[0]} (= {newest[1]}-1)",))
    )
    for toolkit in CUDA_TOOLKITS:
        packages += _cuda_toolkit(*toolkit)
    newest_tk = CUDA_TOOLKITS[-1]
    packages.append(
        FakeDeb(
            "cuda-toolkit",
            f"{newest_tk[1]}-1",
            depends=(f"cuda-toolkit-{newest_tk[0].replace('.', '-')} (>= {newest_tk[1]})",),
        )
    )
    return packages


# TurboVNC and VirtualGL .debs are versioned VERSION-BUILD (release/deb-control.in: `Version:
# @VERSION@-@BUILD@`), BUILD defaulting to the build day (CMakeLists.txt: `string(TIMESTAMP DEFAULT_BUILD
# "%Y%m%d")`). BUILD here is the release tag's commit day (TurboVNC 3.3: 2026-02-06, 3.2.1: 2025-10-07;
# VirtualGL 3.1.4: 2025-10-07, 3.1.3: 2025-04-08); the vendor's build day may differ, hence the role's
# VERSION-* pins.
TURBOVNC_RELEASES = (("3.3", "20260206"), ("3.2.1", "20251007"))
VIRTUALGL_RELEASES = (("3.1.4", "20251007"), ("3.1.3", "20250408"))


STANDIN_DIR = Path(__file__).parent / "turbovnc_standin"


def turbovnc_packages(releases: Iterable[tuple[str, str]] = TURBOVNC_RELEASES) -> list[FakeDeb]:
    """Every release in `releases` (VERSION, BUILD): the pin must pick the wanted one among several.

    Its Xvnc and vncpasswd run a real VNC server: Debian's TigerVNC behind turbovnc_standin/Xvnc, which
    takes exactly TurboVNC's options (and refuses what TurboVNC refuses), hence the Depends on TigerVNC's
    packages (the vendor's package depends on no VNC server). vncserver stays a stub: the role never runs it.
    """
    packages = []
    for version, build in releases:
        banner = f"TurboVNC Server (Xvnc) 64-bit v{version} (build {build})"
        stub = (
            "#!/bin/sh\n"
            f'case "$1" in -version|--version|-v) echo "{banner}"; exit 0;; esac\n'
            'echo "$(basename "$0"): test repository stand-in for TurboVNC; it cannot run a server" >&2\n'
            "exit 1\n"
        )
        packages.append(
            FakeDeb(
                "turbovnc",
                f"{version}-{build}",
                files={
                    "/opt/TurboVNC/bin/vncserver": stub,
                    "/opt/TurboVNC/bin/Xvnc": (STANDIN_DIR / "Xvnc").read_text().replace("@BANNER@", banner),
                    "/opt/TurboVNC/bin/vncpasswd": (STANDIN_DIR / "vncpasswd").read_text(),
                    "/etc/turbovncserver.conf": '# $geometry = "1240x900";\n',
                    "/etc/turbovncserver-security.conf": "# permitted-security-types = TLSVnc\n",
                },
                depends=("tigervnc-standalone-server", "tigervnc-tools"),
                description="A highly-optimized version of VNC that can be used with VirtualGL",
            )
        )
    return packages


# What VirtualGL 3.1.4's server/vglserver_config does for `-config +egl` with its defaults (-s -f: vglusers
# only): `groupadd vglusers`, /etc/modprobe.d/virtualgl.conf giving /dev/nvidia* to root:vglusers 0660
# (NVreg_DeviceFile*), /etc/udev/rules.d/99-virtualgl-dri.rules giving /dev/dri/card* and renderD* to
# root:vglusers 0660. It also chmods the device nodes that exist now; this stand-in does not (the test
# root's /dev is the host's), and it never unloads modules.
VGLSERVER_CONFIG = """#!/bin/sh
# Stand-in for VirtualGL's vglserver_config: the files it writes for -config +egl, not the device nodes.
set -e
if [ "$1" != "-config" ] || [ "$2" != "+egl" ]; then
  echo "stand-in vglserver_config: only -config +egl" >&2; exit 1
fi
echo "... Creating vglusers group ..."
groupadd vglusers 2>/dev/null || echo "Could not add vglusers group (probably because it already exists.)"
gid=$(getent group vglusers | cut -d: -f3)
echo "... Creating /etc/modprobe.d/virtualgl.conf to set requested permissions for /dev/nvidia* ..."
mkdir -p /etc/modprobe.d /etc/udev/rules.d
echo "options nvidia NVreg_DeviceFileUID=0 NVreg_DeviceFileGID=$gid NVreg_DeviceFileMode=0660" \
  > /etc/modprobe.d/virtualgl.conf
chmod 644 /etc/modprobe.d/virtualgl.conf
echo 'KERNEL=="card*|renderD*", MODE="0660", OWNER="root", GROUP="vglusers"' \
  > /etc/udev/rules.d/99-virtualgl-dri.rules
echo "... stand-in: device nodes left alone (the test root's /dev is the host's) ..."
"""


def virtualgl_packages(releases: Iterable[tuple[str, str]] = VIRTUALGL_RELEASES) -> list[FakeDeb]:
    return [
        FakeDeb(
            "virtualgl",
            f"{version}-{build}",
            files={
                # Like the real vglrun: marks the environment (VGL_ISACTIVE=1) and runs the command; no
                # OpenGL interposing here (no GPU, no libvglfaker).
                "/opt/VirtualGL/bin/vglrun": '#!/bin/sh\nwhile [ "${1#-}" != "$1" ]; do shift; done\n'
                'VGL_ISACTIVE=1\nexport VGL_ISACTIVE\nexec "$@"\n',
                "/opt/VirtualGL/bin/vglserver_config": VGLSERVER_CONFIG,
                "/opt/VirtualGL/bin/glxinfo": "#!/bin/sh\necho 'OpenGL vendor string: Mesa (stand-in)'\n",
            },
            description="A toolkit for displaying OpenGL applications to thin clients",
        )
        for version, build in releases
    ]


def default_packages() -> list[FakeDeb]:
    return nvidia_packages() + turbovnc_packages() + virtualgl_packages()


# ---------------------------------------------------------------------------------------------------------


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    kw.setdefault("text", True)
    result = subprocess.run(cmd, capture_output=True, check=False, **kw)
    if result.returncode != 0:
        stderr = result.stderr if isinstance(result.stderr, str) else result.stderr.decode(errors="replace")
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): {stderr.strip()}")
    return result


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        self.server.requests_log.append(args[0] if args else "")  # type: ignore[attr-defined]


class FakeVendorAptRepo:
    """A signed apt repository served on 127.0.0.1; see the module docstring."""

    def __init__(self, root: Path, suite: str, component: str):
        self.root = root
        self.suite = suite
        self.component = component
        handler = functools.partial(_QuietHandler, directory=str(root))
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.requests_log = []  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/"
        self._thread: threading.Thread | None = None
        self.keyring_path = root / "keyring.gpg"  # binary keyring, for signed-by / /etc/apt/keyrings
        self.key_name = "repo-key.pub"  # ASCII-armoured key served next to the packages, like NVIDIA's .pub
        self.packages: list[FakeDeb] = []

    @property
    def key_url(self) -> str:
        return self.url + self.key_name

    @property
    def requests(self) -> list[str]:
        """Request lines served so far (e.g. 'GET /Packages HTTP/1.1'), to check apt really came here."""
        return list(self._server.requests_log)  # type: ignore[attr-defined]

    def deb822(self) -> str:
        """A .sources stanza for this repository, as a role would write it."""
        lines = [
            "Types: deb",
            f"URIs: {self.url}",
            f"Suites: {self.suite}",
            *([f"Components: {self.component}"] if self.suite != "/" else []),
            f"Signed-By: {self.keyring_path}",
        ]
        return "\n".join(lines) + "\n"

    @classmethod
    def build(
        cls,
        dest: Path,
        packages: Iterable[FakeDeb] | None = None,
        *,
        suite: str = "/",
        component: str = "main",
        origin: str = "ScipionCloud test vendor",
        include_keyring_package: bool = True,
    ) -> FakeVendorAptRepo:
        """Build, sign and serve a repository in `dest`. suite "/" gives a flat repository (NVIDIA's CUDA
        layout: `URIs: .../x86_64/`, `Suites: /`); another suite gives dists/<suite>/<component>/."""
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        repo = cls(dest, suite, component)
        try:
            repo._populate(
                list(default_packages() if packages is None else packages), origin, include_keyring_package
            )
        except BaseException:
            repo._server.server_close()
            raise
        repo._thread = threading.Thread(target=repo._server.serve_forever, name="fake-apt-repo", daemon=True)
        repo._thread.start()
        return repo

    def _populate(self, packages: list[FakeDeb], origin: str, include_keyring_package: bool) -> None:
        # A short GNUPGHOME: gpg-agent's socket path must stay under the 108-byte limit.
        gnupghome = tempfile.mkdtemp(prefix="gpg-", dir="/tmp")
        env = {**os.environ, "GNUPGHOME": gnupghome}
        gpg = ["gpg", "--batch", "--quiet", "--no-tty", "--pinentry-mode", "loopback", "--passphrase", ""]
        try:
            _run([*gpg, "--quick-generate-key", GPG_UID, "ed25519", "sign", "never"], env=env)
            keyring = _run([*gpg, "--export"], env=env, text=False).stdout
            self.keyring_path.write_bytes(keyring)
            (self.root / self.key_name).write_text(_run([*gpg, "--armor", "--export"], env=env).stdout)
            if include_keyring_package:
                packages = [*packages, _cuda_keyring(keyring)]
            self.packages = packages
            flat = self.suite == "/"
            pool = self.root / ("pool" if flat else f"pool/{self.component}")
            pool.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix="debs-") as work:
                for package in packages:
                    package.build(pool, Path(work))
            index_dir = (
                self.root if flat else self.root / "dists" / self.suite / self.component / f"binary-{ARCH}"
            )
            index_dir.mkdir(parents=True, exist_ok=True)
            scan = _run(
                ["dpkg-scanpackages", "--multiversion", str(pool.relative_to(self.root)), "/dev/null"],
                cwd=self.root,
            )
            (index_dir / "Packages").write_text(scan.stdout)
            with gzip.open(index_dir / "Packages.gz", "wt") as fh:
                fh.write(scan.stdout)
            release_dir = self.root if flat else self.root / "dists" / self.suite
            options = [
                "-o", f"APT::FTPArchive::Release::Origin={origin}",
                "-o", f"APT::FTPArchive::Release::Label={origin}",
                "-o", f"APT::FTPArchive::Release::Architectures={ARCH}",
            ]  # fmt: skip
            if not flat:
                options += [
                    "-o", f"APT::FTPArchive::Release::Suite={self.suite}",
                    "-o", f"APT::FTPArchive::Release::Codename={self.suite}",
                    "-o", f"APT::FTPArchive::Release::Components={self.component}",
                ]  # fmt: skip
            # Only the index files go into Release (not the .debs, not the key).
            if flat:
                release = _run(["apt-ftparchive", *options, "release", "."], cwd=self.root).stdout
                release = _only_index_lines(release)
            else:
                release = _run(["apt-ftparchive", *options, "release", "."], cwd=release_dir).stdout
            (release_dir / "Release").write_text(release)
            _run(
                [
                    *gpg,
                    "--yes",
                    "--clearsign",
                    "-o",
                    str(release_dir / "InRelease"),
                    str(release_dir / "Release"),
                ],
                env=env,
            )
            _run(
                [*gpg, "--yes", "-abs", "-o", str(release_dir / "Release.gpg"), str(release_dir / "Release")],
                env=env,
            )
        finally:
            subprocess.run(["gpgconf", "--kill", "all"], env=env, capture_output=True, check=False)
            shutil.rmtree(gnupghome, ignore_errors=True)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> FakeVendorAptRepo:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _only_index_lines(release: str) -> str:
    """apt-ftparchive on a flat folder lists every file; keep Packages* in the checksum sections."""
    out = []
    for line in release.splitlines():
        if line.startswith(" ") and not line.split()[-1].startswith("Packages"):
            continue
        out.append(line)
    return "\n".join(out) + "\n"


build = FakeVendorAptRepo.build
