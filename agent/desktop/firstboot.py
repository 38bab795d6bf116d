"""Per-instance desktop secrets, made on the instance and never in the image (the desktop role's unit runs
`scipioncloud-agent desktop-firstboot CONFIG` at every boot, after the agent's first-boot hook made its
token). The VNC password is made and stored by the same code as the agent's password rotation
(agent/desktop/password.py); the instance's names come from the agent's IMDSv2 client (agent/imds.py).

- VNC password (8 characters), obfuscated by `vncpasswd -f` into the desktop user's file (0600), mirrored
  as a SHA-512 crypt line for the status page (nginx auth_basic);
- a self-signed TLS certificate whose subject names are the instance's public name and IP when known,
  renewed when they change (a stopped and started instance gets a new public IP);
- nginx's include that hands the agent's token (made by the agent) to the agent (root only);
- the URL and password in a root-only file and on the serial console, one line the operator's CLI parses:
  SCIPIONCLOUD-DESKTOP url=https://<host>/ password=<password>

CONFIG is the JSON the role renders (templates/desktop-firstboot.json.j2)."""

from __future__ import annotations

import grp
import ipaddress
import json
import os
import pwd
import re
import socket
import subprocess
from pathlib import Path

from agent import imds
from agent.desktop import password as vnc_password

DEFAULT_CONFIG = Path("/etc/scipioncloud/desktop-firstboot.json")
META_KEYS = ["public-hostname", "public-ipv4", "local-hostname", "local-ipv4"]


class FirstbootError(RuntimeError):
    """A step failed; the message names it (never the password)."""


def log(message: str) -> None:
    print(f"desktop-firstboot: {message}", flush=True)


def names(config: dict) -> tuple[str, list[str]]:
    """(the host for the URL, every subject name for the certificate). On EC2 the metadata service is
    waited for (the network may come up late at boot) and one that never answers is an error: a certificate
    without the public name would be made silently. Off EC2 it is asked once."""
    client = imds.ImdsClient(config["imds_url"], timeout_s=2)
    wait_s = float(config.get("imds_wait_s", 0))
    if wait_s > 0 and imds.on_ec2():
        try:
            meta = imds.wait_for(lambda c: c.meta_data(META_KEYS), client, wait_s)
        except imds.ImdsUnavailable as exc:
            raise FirstbootError(f"{exc}; the certificate needs the instance's names") from None
    else:
        try:
            meta = client.meta_data(META_KEYS)
        except imds.ImdsUnavailable:
            meta = {}  # off EC2
    fqdn = socket.getfqdn()
    ordered = [*(meta.get(key) for key in META_KEYS), fqdn, "localhost", "127.0.0.1"]
    unique = list(dict.fromkeys(n for n in ordered if n))
    return unique[0], unique


def subject_alt_names(hosts: list[str]) -> str:
    parts = []
    for host in hosts:
        try:
            ipaddress.ip_address(host)
            parts.append(f"IP:{host}")
        except ValueError:
            parts.append(f"DNS:{host}")
    return ",".join(parts)


def ensure_certificate(config: dict, hosts: list[str]) -> None:
    tls = Path(config["tls_dir"])
    key, cert, record = tls / "desktop.key", tls / "desktop.crt", tls / "desktop.names"
    wanted = "\n".join(hosts) + "\n"
    if key.exists() and cert.exists() and record.exists() and record.read_text() == wanted:
        return
    tls.mkdir(parents=True, exist_ok=True)
    os.chmod(tls, 0o755)  # noqa: S103 - nginx reads the certificate; the key inside is 0600
    new_key, new_cert = tls / ".desktop.key.new", tls / ".desktop.crt.new"
    old_umask = os.umask(0o077)
    try:
        done = subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", str(new_key), "-out", str(new_cert), "-days", str(config["tls_days"]),
             "-subj", f"/CN={hosts[0][:64]}", "-addext", f"subjectAltName={subject_alt_names(hosts)}"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    finally:
        os.umask(old_umask)
    if done.returncode != 0:
        first = done.stderr.strip().splitlines()[:1]
        raise FirstbootError(f"openssl req failed ({done.returncode}): {' '.join(first)}")
    os.chmod(new_key, 0o600)
    os.chmod(new_cert, 0o644)
    os.replace(new_key, key)
    os.replace(new_cert, cert)
    record.write_text(wanted)
    log(f"TLS certificate made for {', '.join(hosts)}")


def read_info_password(path: Path) -> str | None:
    try:
        match = re.search(r"(?m)^password=(\S+)$", path.read_text())
    except FileNotFoundError:
        return None
    return match.group(1) if match else None


def ensure_password(config: dict) -> str:
    info = Path(config["info_file"])
    passwd = Path(config["passwd_file"])
    password = read_info_password(info)
    if password and passwd.exists() and Path(config["htpasswd_file"]).exists():
        return password
    password = vnc_password.generate()
    user = pwd.getpwnam(config["user"])
    vnc_password.store_vnc(password, passwd, config["vncpasswd"], user.pw_uid, user.pw_gid)
    try:
        gid = grp.getgrnam(config["htpasswd_group"]).gr_gid
    except KeyError:
        gid = -1
    vnc_password.store_htpasswd(config["user"], password, Path(config["htpasswd_file"]), gid)
    log(f"VNC password made for {config['user']} ({passwd})")
    return password


def ensure_agent_include(config: dict) -> None:
    """The agent's token as an nginx header, root only. The agent makes the token (its first-boot hook
    `scipioncloud-agent token` runs before this unit); without it the status page cannot reach the agent."""
    token_file = Path(config["agent_token_file"])
    if not token_file.exists():
        raise FirstbootError(
            f"no agent token at {token_file}; the agent role's first-boot hook makes it "
            "(scipioncloud-agent token): is the agent installed?"
        )
    token = token_file.read_text().strip()
    line = f'proxy_set_header Authorization "Bearer {token}";\n'
    include = Path(config["agent_auth_include"])
    if not include.exists() or include.read_text() != line:
        vnc_password.write_private(include, line.encode())


def run(config_path: Path = DEFAULT_CONFIG) -> str:
    """Make what is missing; returns the desktop's URL."""
    config = json.loads(config_path.read_text())
    host, hosts = names(config)
    ensure_certificate(config, hosts)
    password = ensure_password(config)
    ensure_agent_include(config)
    port = int(config["https_port"])
    url = f"https://{host}/" if port == 443 else f"https://{host}:{port}/"
    line = f"SCIPIONCLOUD-DESKTOP url={url} password={password}"
    vnc_password.write_private(
        Path(config["info_file"]),
        f"# ScipionCloud desktop (made at first boot; root only)\nurl={url}\nuser={config['user']}\n"
        f"password={password}\nstatus={url}status/\n{line}\n".encode(),
    )
    shown = 0
    for device in config["console_devices"]:
        try:
            with open(device, "a") as console:  # a character device (a plain file in tests)
                console.write(f"\r\n{line}\r\n")
            shown += 1
        except OSError:
            continue
    log(f"desktop at {url}; password in {config['info_file']} and on {shown} console device(s)")
    return url
