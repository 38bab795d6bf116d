"""Scipion's own code against a real multi-node Slurm, through the hosts.conf we generate.

Three slurmd (gpu1: 2 GPUs, gpu2: 1 GPU and the Spot twin queue gpu-spot, cpu1: none), each in its own network
and UTS namespace, one slurmctld, munge. hosts.conf is generated from the live cluster's `scontrol show
partition/node -o`, made read-only, and pyworkflow (PyPI scipion-pyworkflow, its own venv) launches
ProtClusterCheck runs through Project.launchProtocol and follows them with Project.getRuns(refresh=True,
checkPids=True), the runs-tree refresh of Scipion's GUI, which applies CHECK_COMMAND and JOB_DONE_REGEX.
The agent's boot step and the role's boot units write hosts.conf from the same live cluster."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from agent.scipion_hosts import hostsconf, queues
from tests.support import cluster_venvs, slurm_cluster
from tests.support.slurm_cluster import Node, SlurmCluster

pytestmark = [pytest.mark.integration, pytest.mark.root]
REPO = Path(__file__).resolve().parents[2]
DRIVER = REPO / "tests/support/scipion_queue_driver.py"
NODES = [
    Node("gpu1", cpus=2, memory_mb=4000, gpus=2, gpu_type="tesla", partitions=("gpu",)),
    Node("gpu2", cpus=2, memory_mb=2000, gpus=1, gpu_type="tesla", partitions=("gpu", "gpu-spot")),
    Node("cpu1", cpus=2, memory_mb=1500, partitions=("cpu",)),
]
PARTITIONS = {
    "gpu": "MaxTime=12:00:00 Default=YES",
    "gpu-spot": "MaxTime=12:00:00",
    "cpu": "MaxTime=INFINITE",
}
AGENT = REPO / ".venv/bin/scipioncloud-agent"


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    missing = slurm_cluster.available()
    return f"missing programs: {missing}" if missing else None


@pytest.fixture(scope="module")
def scipion_python() -> Path:
    """Scipion's Python: the pinned pyworkflow in its own venv (make setup), with our check plugin installed
    from this tree."""
    return cluster_venvs.scipion_python()


@pytest.fixture(scope="module")
def run_on_cluster(tmp_path_factory, scipion_python):
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("slurm-scipion")
    tmp.chmod(0o755)
    with SlurmCluster(tmp / "slurm", NODES, PARTITIONS) as cluster:
        partitions = cluster.run("scontrol", "show", "partition", "-o").stdout
        nodes = cluster.run("scontrol", "show", "node", "-o").stdout
        found = queues.from_scontrol(partitions, nodes)
        config = tmp / "scipion/config"
        config.mkdir(parents=True)
        hosts = config / "hosts.conf"
        hosts.write_text(hostsconf.render(found))
        hosts.chmod(0o444)
        shared = tmp / "shared"  # the project file system every node mounts
        shared.mkdir()
        env = {
            **cluster.env,
            "SCIPION_HOME": str(tmp / "scipion"),
            "SCIPION_USER_DATA": str(shared / "ScipionUserData"),
            "SCIPION_HOSTS": str(hosts),
            "SCIPION_DOMAIN": "pyworkflowtests",  # plain pyworkflow: no EM plugins
            "SCIPION_NOTIFY": "False",
            "SCIPION_PYTHON": str(scipion_python),  # what jobs run pw_protocol_run.py with (scipion3 sets it)
        }
        out = tmp / "results.json"
        argv = cluster.in_controller([str(scipion_python), str(DRIVER), "SlurmCheck", str(out)])
        driver = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=420, check=False)
        assert driver.returncode == 0, driver.stdout[-4000:] + driver.stderr[-4000:] + cluster.logs()
        results = json.loads(out.read_text())
        # `scipioncloud cluster check`, as an operator runs it on the desktop, against the same cluster
        check_argv = [
            str(REPO / ".venv/bin/scipioncloud"),
            "cluster",
            "check",
            "--scipion",
            str(scipion_python),
        ]
        check = subprocess.run(cluster.in_controller([*check_argv, "--timeout", "240", "--json"]), env=env,
                               capture_output=True, text=True, timeout=400, check=False)  # fmt: skip
        # roles/scipion's hosts.conf tasks, as `make provision` runs them on a submit host of this Slurm
        provisioned = tmp / "provisioned-hosts.conf"
        play = [str(REPO / ".venv/bin/ansible-playbook"), "-i", "localhost,", "-c", "local",
                str(REPO / "tests/roles/scipion-hosts.yml"), "-e", f"hosts_file={provisioned}",
                "-e", f"ansible_python_interpreter={REPO / '.venv/bin/python'}"]  # fmt: skip
        play_env = {**cluster.env, "ANSIBLE_ROLES_PATH": str(REPO / "roles"), "ANSIBLE_NOCOLOR": "1"}
        role = subprocess.run(cluster.in_controller(play), env=play_env, capture_output=True, text=True,
                              timeout=300, check=False)  # fmt: skip
        # the desktop's boot step: scipioncloud-agent hosts-conf, twice (the second run changes nothing)
        agent_out = tmp / "agent/hosts.conf"
        agent_runs = []
        for _ in range(2):
            argv = cluster.in_controller([str(AGENT), "hosts-conf", "--out", str(agent_out)])
            done = subprocess.run(argv, env=cluster.env, capture_output=True, text=True, timeout=120)
            agent_runs.append((done, agent_out.stat().st_mtime_ns if agent_out.exists() else None))
        # the operator's command on the same file: same code, so nothing to change
        cli = [str(REPO / ".venv/bin/scipioncloud"), "cluster", "hosts-conf", "--out", str(agent_out)]
        cli_run = subprocess.run(cluster.in_controller([*cli, "--json"]), env=cluster.env,
                                 capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
        # the role's boot units (scipion_hosts_on_boot), rendered into a scratch folder, their command run
        units = tmp / "systemd"
        boot_out = tmp / "boot/hosts.conf"
        boot_out.parent.mkdir()
        play_boot = [*play[:-4], "-e", f"hosts_file={boot_out}", "-e", "scipion_hosts_on_boot=true",
                     "-e", f"scipion_systemd_dir={units}", "-e", f"scipion_slurm_conf={cluster.conf}",
                     "-e", "scipion_slurm_bin=/usr/bin", "-e", f"scipion_agent_command={AGENT}",
                     "-e", "scipion_hosts_wait_s=30", *play[-2:]]  # fmt: skip
        boot_role = subprocess.run(cluster.in_controller(play_boot), env=play_env, capture_output=True,
                                   text=True, timeout=300, check=False)  # fmt: skip
        boot_unit = units / "scipioncloud-hosts-conf.service"
        boot_run = None
        if boot_unit.exists():
            # the play wrote the bake's file; the unit writes the live one
            boot_out.unlink(missing_ok=True)
            boot_run = subprocess.run(cluster.in_controller(unit_command(boot_unit)), env=unit_env(boot_unit),
                                      capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
        yield {"results": results, "found": found, "hosts": hosts, "cluster": cluster, "check": check,
               "role": role, "provisioned": provisioned, "agent_runs": agent_runs, "agent_out": agent_out,
               "cli_run": cli_run, "boot_role": boot_role, "units": units, "boot_run": boot_run,
               "boot_out": boot_out}  # fmt: skip


def unit_command(unit: Path) -> list[str]:
    """ExecStart of a rendered unit, split as systemd does for a line without quotes or specifiers."""
    line = next(x for x in unit.read_text().splitlines() if x.startswith("ExecStart="))
    return line.removeprefix("ExecStart=").split()


def unit_env(unit: Path) -> dict[str, str]:
    pairs = [
        x.removeprefix("Environment=") for x in unit.read_text().splitlines() if x.startswith("Environment=")
    ]
    return {"LANG": "C.UTF-8", **dict(p.split("=", 1) for p in pairs)}


def test_queues_come_from_the_live_partitions(run_on_cluster):
    found = {q.name: q for q in run_on_cluster["found"]}
    assert set(found) == {"gpu", "gpu-spot", "cpu"}
    assert found["gpu-spot"].spot and not found["gpu"].spot and not found["cpu"].spot
    gpu, cpu = found["gpu"], found["cpu"]
    assert (gpu.gpus_min, gpu.gpus_max, gpu.gpu_types) == (1, 2, ("tesla",))
    assert (gpu.memory_mb_min, gpu.memory_mb_max, gpu.memory_mb_per_gpu) == (2000, 4000, 2000)
    assert gpu.max_time_hours == 12 and gpu.default
    assert (cpu.gpus_max, cpu.memory_mb_max, cpu.max_time_hours) == (0, 1500, None)


def test_hosts_conf_is_read_only(run_on_cluster):
    hosts = run_on_cluster["hosts"]
    assert stat.S_IMODE(hosts.stat().st_mode) & 0o222 == 0


def test_protocols_go_from_launched_through_running_to_finished(run_on_cluster):
    results = run_on_cluster["results"]
    for key in ("gpu_default", "cpu_default", "gpu_two"):
        result = results[key]
        assert result["status"] == "finished", result
        assert "running" in result["statuses"], result  # a refresh saw it running and did not fail it
        assert result["slurm_state"] == "COMPLETED", result
        assert result["start"] and result["finish"] and result["submit"] <= result["start"], result
    assert results["cpu_default"]["node"] == "cpu1"
    assert results["gpu_default"]["node"] in ("gpu1", "gpu2")


def test_a_job_script_has_one_node_memory_per_node_and_the_dialog_gpus(run_on_cluster):
    results = run_on_cluster["results"]
    default = results["gpu_default"]["script"]
    assert "#SBATCH --nodes=1" in default
    assert "#SBATCH --gres=gpu:1" in default and "#SBATCH --mem=2000" in default
    assert "#SBATCH --time=12:00:00" in default  # the partition's limit, below the 24 h default
    assert "#SBATCH --gres=gpu:0" in results["cpu_default"]["script"]
    assert "#SBATCH --mem=1500" in results["cpu_default"]["script"]
    assert results["gpu_default"]["gpus_granted"] == 1


def test_two_gpus_are_asked_granted_and_only_where_two_exist(run_on_cluster):
    result = run_on_cluster["results"]["gpu_two"]
    assert "#SBATCH --gres=gpu:2" in result["script"]
    assert (result["gpus_asked"], result["gpus_granted"]) == (2, 2), result
    assert result["node"] == "gpu1", result


def test_a_failing_protocol_is_reported_failed(run_on_cluster):
    result = run_on_cluster["results"]["fails"]
    assert result["status"] == "failed", result
    assert "check protocol failed on purpose" in (result["error"] or ""), result


def test_a_job_killed_outside_scipion_is_reported_failed_by_the_queue_check(run_on_cluster):
    result = run_on_cluster["results"]["killed_outside"]
    assert "running" in result["statuses"], result
    assert result["status"] == "failed", result
    assert "not found running on the queue engine" in (result["error"] or ""), result


def test_cancel_from_scipion_cancels_the_slurm_job(run_on_cluster):
    result = run_on_cluster["results"]["cancelled"]
    assert result["status"] == "aborted", result
    assert result["slurm_state"] == "CANCELLED", result


def test_too_much_memory_is_refused_with_slurms_reason(run_on_cluster):
    result = run_on_cluster["results"]["too_much_memory"]
    assert result["status"] == "failed", result
    assert result["job_id"] in (None, "-1"), result
    assert "Memory specification can not be satisfied" in (result["error"] or ""), result


def test_cluster_check_reports_every_queue_with_times_and_gpus(run_on_cluster):
    check = run_on_cluster["check"]
    assert check.returncode == 0, check.stdout + check.stderr
    rows = {row["queue"]: row for row in json.loads(check.stdout)["queues"]}
    assert set(rows) == {"gpu", "gpu-spot", "cpu"}
    for row in rows.values():
        assert row["status"] == "finished" and row["gpus_ok"], row
        assert 0 <= row["wait_s"] < row["total_s"] and row["run_s"] >= 2, row
    assert (rows["gpu"]["gpus_asked"], rows["gpu"]["gpus_granted"]) == (1, 1)
    assert (rows["gpu-spot"]["gpus_asked"], rows["gpu-spot"]["gpus_granted"], rows["gpu-spot"]["node"]) == (
        1, 1, "gpu2")  # fmt: skip
    assert (rows["cpu"]["gpus_asked"], rows["cpu"]["gpus_granted"]) == (0, 0)
    print("queue check figures:", json.dumps(list(rows.values())))


def test_the_role_writes_the_same_file_from_the_live_slurm_owned_by_root(run_on_cluster):
    role = run_on_cluster["role"]
    assert role.returncode == 0, role.stdout[-3000:] + role.stderr[-2000:]
    provisioned = run_on_cluster["provisioned"]
    assert provisioned.read_text() == run_on_cluster["hosts"].read_text()
    info = provisioned.stat()
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o644)


def test_a_job_waits_pending_while_scipion_keeps_the_protocol_launched(run_on_cluster):
    result = run_on_cluster["results"]["pending"]
    waiting = [status for state, status in result["while_waiting"] if state == "PENDING"]
    assert waiting, result  # squeue said PENDING while GUI-style refreshes ran the status check
    assert set(waiting) <= {"launched", "scheduled"}, result["while_waiting"]
    assert "Resources" in result["pending_reasons"], result
    assert result["status"] == "finished" and result["slurm_state"] == "COMPLETED", result
    assert "failed" not in result["statuses"], result
    assert result["start"] >= result["first_finish"], result  # it ran once cpu1 was free


def test_spot_queue_jobs_ask_to_be_requeued_and_the_others_not(run_on_cluster):
    results = run_on_cluster["results"]
    assert "#SBATCH --requeue" in results["requeue"]["script"]
    assert "#SBATCH --no-requeue" in results["cpu_default"]["script"]
    assert "#SBATCH --no-requeue" in results["gpu_default"]["script"]


@pytest.mark.parametrize("how", ["requeue", "spot_node_lost"])
def test_a_requeued_job_keeps_its_protocol_running_to_finished(run_on_cluster, how):
    result = run_on_cluster["results"][how]
    requeued = result["requeued_job"]
    assert requeued["JobState"] == "PENDING" and requeued["Restarts"] == "1", result
    assert result["job_ids"] == [result["job_id"]] == [requeued["JobId"]], result  # the same Slurm job
    states = {state for state, _ in result["while_requeued"]}
    assert "PENDING" in states, result["while_requeued"]
    assert not states & {"NODE_FAIL", "PREEMPTED", "FAILED", "CANCELLED"}, result["while_requeued"]
    assert all(status == "running" for _, status in result["while_requeued"]), result["while_requeued"]
    assert result["status"] == "finished" and result["slurm_state"] == "COMPLETED", result
    assert "failed" not in result["statuses"], result
    assert result["node"] == "gpu2" and result["gpus_granted"] == 1, result
    assert result["start"] > result["requeued_at"], result  # the script started over and the protocol resumed


def test_a_job_that_loses_its_node_without_requeue_is_reported_failed(run_on_cluster):
    result = run_on_cluster["results"]["node_lost"]
    assert result["slurm_state"] == "NODE_FAIL", result
    assert "running" in result["statuses"] and result["status"] == "failed", result


def test_the_agent_writes_hosts_conf_from_the_live_slurm_once(run_on_cluster):
    (first, first_mtime), (second, second_mtime) = run_on_cluster["agent_runs"]
    assert first.returncode == 0, first.stdout + first.stderr
    assert "written" in first.stdout, first.stdout
    assert second.returncode == 0 and "unchanged" in second.stdout, second.stdout + second.stderr
    assert first_mtime == second_mtime  # idempotent: the second boot rewrites nothing
    cli = run_on_cluster["cli_run"]
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert json.loads(cli.stdout)["changed"] is False  # `scipioncloud cluster hosts-conf`: the same text
    out = run_on_cluster["agent_out"]
    assert out.read_text() == run_on_cluster["hosts"].read_text()  # one generator: agent, CLI, role, test
    info = out.stat()
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o644)


def test_the_roles_boot_unit_writes_hosts_conf_once_slurm_is_configured(run_on_cluster):
    role = run_on_cluster["boot_role"]
    assert role.returncode == 0, role.stdout[-3000:] + role.stderr[-2000:]
    units = run_on_cluster["units"]
    path_unit = (units / "scipioncloud-hosts-conf.path").read_text()
    assert f"PathExists={run_on_cluster['cluster'].conf}" in path_unit
    assert (units / "multi-user.target.wants/scipioncloud-hosts-conf.path").resolve() == (
        units / "scipioncloud-hosts-conf.path")  # fmt: skip
    service = (units / "scipioncloud-hosts-conf.service").read_text()
    assert "After=network-online.target" in service and "Type=oneshot" in service
    names = [str(units / f"scipioncloud-hosts-conf.{kind}") for kind in ("path", "service")]
    verify = ["systemd-analyze", "verify", *names]
    verified = subprocess.run(verify, capture_output=True, text=True, timeout=60)
    complaints = [line for line in verified.stderr.splitlines() if "scipioncloud-hosts-conf" in line]
    assert verified.returncode == 0 and not complaints, verified.stdout + verified.stderr
    boot = run_on_cluster["boot_run"]
    assert boot.returncode == 0, boot.stdout + boot.stderr
    assert run_on_cluster["boot_out"].read_text() == run_on_cluster["hosts"].read_text()


def test_the_agent_fails_loudly_and_keeps_the_file_when_slurm_does_not_answer(tmp_path):
    if slurm_cluster.available():
        pytest.skip(f"missing programs: {slurm_cluster.available()}")
    from tests.support.paths import free_port

    conf = tmp_path / "slurm.conf"  # a controller on a loopback port where nothing listens
    conf.write_text(f"ClusterName=gone\nSlurmctldHost=gone(127.0.0.1)\nSlurmctldPort={free_port()}\n"
                    f"MessageTimeout=1\nAuthType=auth/munge\nAuthInfo=socket={tmp_path}/munge.sock\n"
                    "NodeName=n1 CPUs=1\nPartitionName=p Nodes=n1\n")  # fmt: skip
    hosts = tmp_path / "hosts.conf"
    hosts.write_text("; the previous queues\n")
    done = subprocess.run([str(AGENT), "hosts-conf", "--out", str(hosts), "--wait", "1"],
                          env={**os.environ, "SLURM_CONF": str(conf)}, capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode != 0
    assert "Unable to contact slurm controller" in done.stderr, done.stderr
    assert hosts.read_text() == "; the previous queues\n"


def test_namespaces_are_gone_after_the_cluster_stops(tmp_path):
    if _skip_reason():
        pytest.skip(_skip_reason())
    cluster = SlurmCluster(tmp_path, [Node("n1", partitions=("p",))], {"p": "Default=YES"})
    with cluster:
        names = [cluster.netns_ctl, *cluster.netns.values()]
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert all(n in listed for n in names)
        daemons = list(cluster.processes)
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(n in listed for n in names)
    assert all(p.poll() is not None for p in daemons)
