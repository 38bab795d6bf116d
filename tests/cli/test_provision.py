"""`scipioncloud provision` with ansible-runner, against this machine over ansible_connection=local with a
tiny playbook that only touches files under tmp_path (the real roles/site.yml is tested by its owners)."""

from __future__ import annotations

import json
import textwrap

import pytest
from click.testing import CliRunner

from scipioncloud import provision
from scipioncloud.cli import main
from scipioncloud.errors import BadInput

pytestmark = pytest.mark.integration


def playbook(tmp_path, tasks: str):
    path = tmp_path / "site.yml"
    path.write_text(
        textwrap.dedent(
            """\
            - name: Tiny site
              hosts: all
              gather_facts: false
              tasks:
            """
        )
        + textwrap.indent(textwrap.dedent(tasks), "    ")
    )
    return path


GOOD = """\
- name: Write the marker
  ansible.builtin.copy:
    dest: "{{ out_dir }}/marker"
    content: "image={{ scipioncloud_image }}\\n"
    mode: "0644"
- name: Check the marker
  ansible.builtin.stat:
    path: "{{ out_dir }}/marker"
"""


def vars_file(tmp_path):
    path = tmp_path / "vars.yml"
    path.write_text(f"out_dir: {tmp_path}\n")
    return path


def test_provision_runs_the_playbook_and_summarizes_per_host(tmp_path):
    runner = CliRunner()
    args = [
        "provision",
        "localhost",
        "--connection",
        "local",
        "--image",
        "scipion-compute",
        "--playbook",
        str(playbook(tmp_path, GOOD)),
        "--vars-file",
        str(vars_file(tmp_path)),
    ]
    result = runner.invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["failures"] == []
    assert report["hosts"]["localhost"]["changed"] == 1
    assert report["hosts"]["localhost"]["ok"] == 2
    assert (tmp_path / "marker").read_text() == "image=scipion-compute\n"

    again = runner.invoke(main, args)  # idempotent playbook: a second run changes nothing
    assert again.exit_code == 0
    assert "TASK Write the marker" in again.stderr
    # piped (not a terminal): a header and one whole line per host, nothing folded
    assert again.stdout.splitlines() == [
        "host       ok  changed  failed  unreachable  skipped",
        "localhost  2   0        0       0            0",
    ]


def test_provision_failure_names_host_task_and_message(tmp_path):
    bad = playbook(
        tmp_path, GOOD + '- name: Refuse politely\n  ansible.builtin.fail:\n    msg: "disk /data is full"\n'
    )
    result = CliRunner().invoke(
        main,
        [
            "provision",
            "localhost",
            "--connection",
            "local",
            "--playbook",
            str(bad),
            "--vars-file",
            str(vars_file(tmp_path)),
        ],
    )
    assert result.exit_code == 1
    assert "error: localhost: task 'Refuse politely' failed: disk /data is full" in result.stderr
    assert "localhost: failed" in result.stderr  # the progress line as it happened
    as_json = CliRunner().invoke(
        main,
        ["provision", "localhost", "--connection", "local", "--playbook", str(bad), "--vars-file",
         str(vars_file(tmp_path)), "--json"],
    )  # fmt: skip
    assert as_json.exit_code == 1
    report = json.loads(as_json.stdout)  # exactly one document: the error, with the per-host rows
    assert "Refuse politely" in report["error"] and report["hosts"]["localhost"]["failures"] == 1


def test_provision_reports_one_row_per_host_port(tmp_path):
    # Ansible reads "NAME:PORT" in an inventory as a host and its port; the summary keeps our name, once.
    result = provision.run(
        ["localhost:22"],
        playbook=playbook(tmp_path, GOOD),
        connection="local",
        extravars={"out_dir": str(tmp_path)},
        vars_files=(vars_file(tmp_path),),
    )
    assert result.ok, result.failures
    assert list(result.hosts) == ["localhost:22"]
    assert result.hosts["localhost:22"]["changed"] == 1


def test_provision_works_from_any_folder_with_the_packaged_roles(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no roles/ here
    assert provision.DEFAULT_PLAYBOOK.is_file()
    assert provision.image_vars(provision.DEFAULT_PLAYBOOK, "scipion-desktop")[0].is_file()
    check = CliRunner().invoke(main, ["provision", "localhost", "--image", "scipion-nope"])
    assert check.exit_code == 2 and "unknown image 'scipion-nope'" in check.stderr


def test_provision_unreachable_host_is_named(tmp_path):
    result = provision.run(
        ["127.0.0.1"],
        playbook=playbook(tmp_path, GOOD),
        user="nobody-here",
        key_file=None,
        extravars={"out_dir": str(tmp_path)},
    )
    assert not result.ok
    assert result.failures and result.failures[0].host == "127.0.0.1"
    assert result.failures[0].unreachable
    assert not (tmp_path / "marker").exists()


def test_provision_rejects_bad_input(tmp_path):
    with pytest.raises(BadInput, match="does not exist"):
        provision.run(["localhost"], playbook=tmp_path / "missing.yml")
    with pytest.raises(BadInput, match="not a host name"):
        provision.build_inventory(["a b; rm -rf /"], "ubuntu", None)
    result = CliRunner().invoke(main, ["provision", "localhost", "--playbook", str(tmp_path / "nope.yml")])
    assert result.exit_code == 2 and "pass --playbook" in result.stderr


@pytest.mark.parametrize(
    ("host", "address", "port"),
    [
        ("ws1.lab.org", "ws1.lab.org", None),
        ("ws1.lab.org:2222", "ws1.lab.org", 2222),
        ("10.0.0.5:22", "10.0.0.5", 22),
        ("[fe80::1]:2200", "fe80::1", 2200),
        ("fe80::1", "fe80::1", None),
    ],
)
def test_hosts_may_name_an_ssh_port(host, address, port):
    entry = provision.build_inventory([host], "ubuntu", None)["all"]["hosts"][provision.inventory_name(host)]
    assert ":" not in provision.inventory_name(host)  # Ansible would read NAME:PORT as a second host
    assert entry["ansible_host"] == address
    assert entry.get("ansible_port") == port


def test_out_of_range_port_is_refused():
    with pytest.raises(BadInput, match="port 70000 is out of range"):
        provision.build_inventory(["ws1:70000"], "ubuntu", None)


def test_provision_passes_the_image_vars_file(tmp_path):
    (tmp_path / "roles").mkdir()
    (tmp_path / "images").mkdir()
    site = tmp_path / "roles" / "site.yml"
    site.write_text(
        playbook(
            tmp_path, GOOD.replace("image={{ scipioncloud_image }}", "flavour={{ flavour }}")
        ).read_text()
    )
    (tmp_path / "images" / "scipion-compute.yml").write_text(f"flavour: headless\nout_dir: {tmp_path}\n")
    result = provision.run(["localhost"], playbook=site, image="scipion-compute", connection="local")
    assert result.ok, result.failures
    assert (tmp_path / "marker").read_text() == "flavour=headless\n"
    bad = CliRunner().invoke(
        main,
        [
            "provision",
            "localhost",
            "--connection",
            "local",
            "--playbook",
            str(site),
            "--image",
            "scipion-nope",
        ],
    )
    assert bad.exit_code == 2
    assert "unknown image 'scipion-nope'" in bad.stderr and "known: scipion-compute" in bad.stderr
