"""A stand-in for Miniforge's installer, served on 127.0.0.1, for roles/scipion in the test root filesystem.

conda-forge's installers and channels cannot be reached here. What the role relies on is the installer's
interface and the few conda commands it calls, so this builds an installer with the real file name
(`Miniforge3-<version>-Linux-x86_64.sh`) and the real interface, taken from the header that conda/constructor
writes into every such installer (constructor/header.sh): `bash <installer> -b -p PREFIX` installs in batch
mode, an existing PREFIX is refused without `-u` ("ERROR: File or directory already exists"), `-h` prints
the usage; the prefix then holds `bin/conda`, `condabin/conda`, `etc/profile.d/conda.sh` and
`conda-meta/history`.

Its `conda` answers the commands the role and scipion-installer use:
    conda --version                          "conda <version>"
    conda create --yes --quiet --prefix P python=SPEC
        SPEC is a conda match spec on the version ("3.10" matches 3.10.*, "3.10.13" only that); the
        environment is a real CPython of this machine (pyenv's build of that version), made relocatable the
        way conda packages are (every ELF's run path is $ORIGIN-relative and the shared libraries its
        extension modules need sit in P/lib, as conda-forge's openssl, tk, sqlite... do). A spec no bundled
        interpreter satisfies fails like conda: "PackagesNotFoundError".
    conda shell.bash hook                    a `conda` shell function with `activate`/`deactivate`
Everything else (`conda env create`, `conda install`: what RELION 5, EMAN2, Gctf and Gautomatch run) needs
conda-forge's channels: it fails loudly, exit 1, naming itself as the stand-in.

    installer = build(tmp / "conda", python_versions=("3.10",))   # -> CondaInstaller (path, sha256, version)
    with serve(installer) as url: ...                              # http://127.0.0.1:<port>/<file name>
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import http.server
import shutil
import subprocess
import tarfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
PYENV = Path.home() / ".pyenv" / "versions"
# The C library family every Linux system has; everything else an interpreter links goes into PREFIX/lib.
SYSTEM_LIBS = ("libc.so", "libm.so", "libpthread.so", "libdl.so", "librt.so", "libutil.so", "ld-linux",
               "linux-vdso", "libresolv.so", "libcrypt.so")  # fmt: skip
# conda-build's placeholder for the build prefix (constructor's install.py: prefix_placeholder)
PLACEHOLDER = "/opt/anaconda1anaconda2anaconda3"
SKIP_DIRS = {"test", "tests", "idlelib", "__pycache__", "turtledemo", "lib2to3"}


@dataclasses.dataclass(frozen=True)
class CondaInstaller:
    path: Path
    sha256: str
    version: str  # the Miniforge release it imitates (roles/scipion defaults: scipion_conda_version)
    pythons: tuple[str, ...]  # full versions of the bundled interpreters


def role_conda_version() -> str:
    defaults = yaml.safe_load((REPO / "roles/scipion/defaults/main.yml").read_text())
    return str(defaults["scipion_conda_version"])


def pyenv_python(spec: str) -> Path:
    """The newest pyenv build matching a conda-style version spec ("3.10" or "3.10.13")."""
    found = sorted(
        (p for p in PYENV.glob(f"{spec}*") if p.name == spec or p.name.startswith(spec + ".")),
        key=lambda p: tuple(int(x) for x in p.name.split(".") if x.isdigit()),
    )
    if not found:
        raise FileNotFoundError(f"no pyenv build of Python {spec} in {PYENV}")
    return found[-1]


def _elf(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"\x7fELF"


def _needed_libs(path: Path) -> list[Path]:
    out = subprocess.run(["ldd", str(path)], capture_output=True, text=True, check=False).stdout
    libs = []
    for line in out.splitlines():
        parts = line.split("=>")
        if len(parts) == 2 and parts[1].strip().startswith("/"):
            lib = Path(parts[1].split("(")[0].strip())
            if not any(lib.name.startswith(s) for s in SYSTEM_LIBS):
                libs.append(lib)
    return libs


def _relocatable_python(source: Path, dest: Path) -> str:
    """Copy pyenv's build into dest, bring its non-libc libraries along and set $ORIGIN run paths."""

    def ignore(folder: str, names: list[str]) -> list[str]:
        # no tests, static library or objects; no .pth this machine's sandbox added to pyenv's site-packages
        unwanted = (".a", ".o", ".pth")
        return [n for n in names if n in SKIP_DIRS or n.endswith(unwanted) or n.startswith("config-")]

    shutil.copytree(source, dest, symlinks=True, ignore=ignore)
    lib = dest / "lib"
    elves = [p for p in dest.rglob("*") if p.is_file() and not p.is_symlink() and _elf(p)]
    # conda packages carry their build prefix in text files (sysconfig data, script shebangs) as a
    # placeholder listed in info/has_prefix, and conda writes the environment's prefix there on install
    has_prefix = []
    for path in dest.rglob("*"):
        if path.is_file() and not path.is_symlink() and path not in elves:
            data = path.read_bytes()
            if str(source).encode() in data:
                path.write_bytes(data.replace(str(source).encode(), PLACEHOLDER.encode()))
                has_prefix.append(str(path.relative_to(dest)))
    (dest / "info").mkdir()
    (dest / "info/has_prefix").write_text("".join(f"{p}\n" for p in sorted(has_prefix)))
    for elf in elves:
        for needed in _needed_libs(elf):
            if not str(needed).startswith(str(source)) and not (lib / needed.name).exists():
                shutil.copy2(needed.resolve(), lib / needed.name)
    copied = [p for p in lib.iterdir() if p.is_file() and not p.is_symlink() and _elf(p) and p not in elves]
    for elf in elves + copied:
        rel = Path(*[".."] * len(elf.parent.relative_to(dest).parts)) / "lib"
        subprocess.run(["patchelf", "--force-rpath", "--set-rpath", f"$ORIGIN/{rel}", str(elf)], check=True)
    version = subprocess.run(
        [str(dest / "bin/python3"), "-c", "import platform; print(platform.python_version())"],
        capture_output=True, text=True, check=True, env={"LD_LIBRARY_PATH": ""},
    ).stdout.strip()  # fmt: skip
    return version


CONDA_SCRIPT = r"""#!/bin/bash
# Stand-in for conda __VERSION__ (ScipionCloud tests, tests/support/conda_standin.py): offline, no channels.
set -u
prefix="$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)"
refuse() {
  echo "stand-in conda: 'conda $*' needs conda-forge's channels, which this offline test rig cannot reach" >&2
  exit 1
}
case "${1:-}" in
  --version|-V) echo "conda __VERSION__" ;;
  shell.bash|shell.posix)
    [ "${2:-}" = hook ] || refuse "$@"
    cat <<EOF
export CONDA_EXE='$prefix/bin/conda'
conda() {
  case "\${1:-}" in
    activate)
      local target="\${2:-base}"
      case "\$target" in base) target='$prefix' ;; */*) ;; *) target='$prefix/envs/'"\$target" ;; esac
      [ -d "\$target/conda-meta" ] || { echo "EnvironmentNameNotFound: \$2" >&2; return 1; }
      export CONDA_PREFIX="\$target" CONDA_DEFAULT_ENV="\${2:-base}" PATH="\$target/bin:\$PATH" ;;
    deactivate) unset CONDA_PREFIX CONDA_DEFAULT_ENV ;;
    *) '$prefix/bin/conda' "\$@" ;;
  esac
}
EOF
    ;;
  create)
    shift; target=""; spec=""
    while [ $# -gt 0 ]; do
      case "$1" in
        --yes|-y|--quiet|-q) ;;
        --prefix|-p) target="$2"; shift ;;
        --name|-n) target="$prefix/envs/$2"; shift ;;
        python=*) spec="${1#python=}" ;;
        *) refuse create "$1" ;;
      esac
      shift
    done
    [ -n "$target" ] && [ -n "$spec" ] || refuse create
    for build in "$prefix"/pkgs/python-*; do
      full="${build##*/python-}"
      case "$full" in "$spec"|"$spec".*)
        [ -e "$target" ] && { echo "CondaValueError: prefix already exists: $target" >&2; exit 1; }
        mkdir -p "$(dirname "$target")"
        cp -a "$build" "$target"
        while IFS= read -r file; do
          sed -i "s|__PLACEHOLDER__|$target|g" "$target/$file"
        done < "$build/info/has_prefix"
        rm -rf "$target/info"
        mkdir -p "$target/conda-meta"
        echo "==> $(date '+%Y-%m-%d %H:%M:%S') <==" > "$target/conda-meta/history"
        echo "# cmd: conda create --prefix $target python=$spec" >> "$target/conda-meta/history"
        echo "+conda-forge/linux-64::python-$full" >> "$target/conda-meta/history"
        exit 0 ;;
      esac
    done
    echo "PackagesNotFoundError: The following packages are not available from current channels:" >&2
    printf '\n  - python=%s\n' "$spec" >&2
    exit 1 ;;
  *) refuse "$@" ;;
esac
"""

HEADER = r"""#!/bin/sh
# Stand-in for Miniforge3-__VERSION__-Linux-x86_64.sh (ScipionCloud tests): same options as the real
# constructor-made installer, payload = a tarball after the __PAYLOAD__ line.
set -eu
BATCH=0; UPDATE=0; PREFIX="$HOME/miniforge3"
usage() {
  echo "usage: $0 [options]"; echo
  echo "Installs Miniforge3 __VERSION__"; echo
  echo "-b           run install in batch mode (without manual intervention),"
  echo "             it is expected the license terms (if any) are agreed upon"
  echo "-f           no error if install prefix already exists"
  echo "-h           print this help message and exit"
  echo "-p PREFIX    install prefix, defaults to $PREFIX, must not contain spaces."
  echo "-u           update an existing installation"
}
while getopts "bfhp:u" x; do
  case "$x" in
    b) BATCH=1 ;;
    f|u) UPDATE=1 ;;
    h) usage; exit 2 ;;
    p) PREFIX="$OPTARG" ;;
    *) usage; exit 2 ;;
  esac
done
[ "$BATCH" = 1 ] || { echo "stand-in installer: only batch mode (-b) is imitated" >&2; exit 2; }
if [ "$UPDATE" = 0 ] && [ -e "$PREFIX" ]; then
  echo "ERROR: File or directory already exists: '$PREFIX'" >&2
  echo "If you want to update an existing installation, use the -u option." >&2
  exit 1
fi
echo "PREFIX=$PREFIX"
mkdir -p "$PREFIX"
line=$(awk '/^__PAYLOAD__$/ { print NR + 1; exit 0 }' "$0")
tail -n +"$line" "$0" | tar -xz -C "$PREFIX"
echo "installation finished."
exit 0
__PAYLOAD__
"""


def build(
    dest: Path, python_versions: Iterable[str] = ("3.10",), version: str | None = None
) -> CondaInstaller:
    """Build the stand-in installer in dest (a folder); python_versions: conda-style specs to bundle."""
    version = version or role_conda_version()
    dest.mkdir(parents=True, exist_ok=True)
    tree = dest / "tree"
    (tree / "pkgs").mkdir(parents=True)
    fulls = []
    for spec in python_versions:
        staging = dest / f"staging-{spec}"
        full = _relocatable_python(pyenv_python(spec), staging)
        staging.rename(tree / "pkgs" / f"python-{full}")
        fulls.append(full)
    for folder in ("bin", "condabin", "etc/profile.d", "conda-meta", "envs"):
        (tree / folder).mkdir(parents=True, exist_ok=True)
    conda = tree / "bin/conda"
    script = CONDA_SCRIPT.replace("__VERSION__", version.split("-")[0])
    conda.write_text(script.replace("__PLACEHOLDER__", PLACEHOLDER))
    conda.chmod(0o755)
    (tree / "condabin/conda").symlink_to("../bin/conda")
    (tree / "etc/profile.d/conda.sh").write_text('eval "$("$(dirname "${BASH_SOURCE[0]}")/../../bin/conda" '
                                                 'shell.bash hook)"\n')  # fmt: skip
    (tree / "conda-meta/history").write_text(f"# stand-in for Miniforge3 {version}\n")
    payload = dest / "payload.tar.gz"
    with tarfile.open(payload, "w:gz", compresslevel=1) as tar:
        for child in sorted(tree.iterdir()):
            tar.add(child, arcname=child.name)
    installer = dest / f"Miniforge3-{version}-Linux-x86_64.sh"
    with installer.open("wb") as out:
        out.write(HEADER.replace("__VERSION__", version).encode())
        out.write(payload.read_bytes())
    installer.chmod(0o755)
    payload.unlink()
    shutil.rmtree(tree)
    digest = hashlib.sha256(installer.read_bytes()).hexdigest()
    return CondaInstaller(installer, digest, version, tuple(fulls))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@contextlib.contextmanager
def serve(installer: CondaInstaller) -> Iterator[str]:
    """The installer's URL on 127.0.0.1 (a free port) while the context lasts."""
    handler = functools.partial(_QuietHandler, directory=str(installer.path.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/{installer.path.name}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
