"""Queues from `scontrol show partition/node -o` (real Slurm 22.05.8 output, captured from the test cluster of
tests/cluster/test_scipion_slurm.py) and the hosts.conf made from them, read back the way pyworkflow reads
it (RawConfigParser, %_( -> %(, the JOB_DONE_REGEX rule of launch._checkJobStatus)."""

from __future__ import annotations

import configparser
import json
import re
from pathlib import Path

import pytest

from agent.scipion_hosts import hostsconf, queues

DATA = Path(__file__).parent / "data"
PARTITIONS = (DATA / "scontrol-22.05-partition.txt").read_text()
NODES = (DATA / "scontrol-22.05-node.txt").read_text()


def pyworkflow_value(text: str, key: str) -> str:
    """HostConfig.load's reading of one key (pyworkflow/protocol/hosts.py)."""
    parser = configparser.RawConfigParser(comment_prefixes=";")
    parser.optionxform = str
    parser.read_string(text)
    return parser.get("localhost", key).replace("\n##", "\n#").replace("%_(", "%(")


def check_status(output: str, regex: str) -> str:
    """launch._checkJobStatus: empty output or a regex match is 'finished', anything else 'running'."""
    if output == "":
        return "finished"
    return "finished" if re.search(regex, output) else "running"


def test_partitions_and_their_nodes():
    found = {q.name: q for q in queues.from_scontrol(PARTITIONS, NODES)}
    assert found["gpu"].nodes == ("gpu1", "gpu2") and found["cpu"].nodes == ("cpu1",)
    assert (found["gpu"].gpus_min, found["gpu"].gpus_max, found["gpu"].gpu_types) == (1, 2, ("tesla",))
    assert found["gpu"].memory_mb_per_gpu == 1000 and found["gpu"].max_time_hours == 12
    assert found["cpu"].max_time_hours is None and not found["cpu"].has_gpus


@pytest.mark.parametrize(
    ("text", "hours"),
    [("UNLIMITED", None), ("30", 0), ("90:00", 1), ("2:00:00", 2), ("1-12:00:00", 36), ("7-00:00", 168)],
)
def test_slurm_time_limits(text, hours):
    assert queues.parse_time_hours(text) == hours


def test_gres_counts_and_types():
    assert queues.parse_gres("gpu:a100:4(S:0-1),gpu:t4:1,shard:8") == (5, ("a100", "t4"))
    assert queues.parse_gres("(null)") == (0, ())


def test_down_partitions_and_empty_clusters():
    down = PARTITIONS.replace("State=UP", "State=DOWN")
    with pytest.raises(ValueError, match="no partition that is UP"):
        queues.from_scontrol(down, NODES)


def test_hosts_conf_offers_gpus_memory_and_time_per_queue():
    text = hostsconf.render(queues.from_scontrol(PARTITIONS, NODES))
    rows = json.loads(pyworkflow_value(text, "QUEUES"))
    assert list(rows) == ["gpu", "cpu"]  # the default partition first
    gpu = {row[0]: row for row in rows["gpu"]}
    assert gpu["GPU_COUNT"][1] == "1" and "1-2 tesla per node" in gpu["GPU_COUNT"][2]
    assert gpu["JOB_MEMORY"][1] == "1000" and "max 2000" in gpu["JOB_MEMORY"][2]
    assert gpu["JOB_TIME"][1] == "12"
    cpu = {row[0]: row[1] for row in rows["cpu"]}
    assert cpu == {"GPU_COUNT": "0", "JOB_MEMORY": "1500", "JOB_TIME": "24", "JOB_REQUEUE": "no-requeue"}


def test_only_spot_queues_ask_slurm_to_requeue():
    spot = PARTITIONS.replace("PartitionName=gpu ", "PartitionName=gpu-spot ")
    nodes = NODES.replace("Partitions=gpu ", "Partitions=gpu-spot ")
    found = {q.name: q for q in queues.from_scontrol(spot, nodes)}
    assert found["gpu-spot"].spot and not found["cpu"].spot
    rows = json.loads(pyworkflow_value(hostsconf.render(found.values()), "QUEUES"))
    requeue = {name: {row[0]: row[1] for row in queue}["JOB_REQUEUE"] for name, queue in rows.items()}
    assert requeue == {"gpu-spot": "requeue", "cpu": "no-requeue"}
    listed = queues.from_list(
        [
            {"name": "a-spot", "cpus": 2, "memory_mb": 100},
            {"name": "b", "cpus": 2, "memory_mb": 100, "spot": True},
            {"name": "c", "cpus": 1, "memory_mb": 1},
        ]
    )
    assert [q.spot for q in listed] == [True, True, False]


def test_submit_template_fills_like_pyworkflow():
    text = hostsconf.render(queues.from_scontrol(PARTITIONS, NODES))
    submit = {"JOB_NAME": "12", "SCIPION_PROJECT": "p", "JOB_LOGS": "/x/logs/scipion12", "JOB_QUEUE": "gpu",
              "JOB_NODES": 2, "JOB_THREADS": 4, "JOB_MEMORY": "8000", "JOB_TIME": "6", "GPU_COUNT": "2",
              "JOB_NODEFILE": "/x/n", "JOB_COMMAND": "run", "JOB_REQUEUE": "requeue"}  # fmt: skip
    script = pyworkflow_value(text, "SUBMIT_TEMPLATE") % submit
    for line in ("#SBATCH --nodes=1", "#SBATCH --ntasks=2", "#SBATCH --cpus-per-task=4", "#SBATCH --mem=8000",
                 "#SBATCH --time=6:00:00", "#SBATCH --gres=gpu:2", "#SBATCH --partition=gpu",
                 "#SBATCH --requeue"):  # fmt: skip
        assert line in script.splitlines()
    assert pyworkflow_value(text, "CHECK_COMMAND") % {"JOB_ID": 7} == (
        "squeue --noheader --states=all --format=%T --jobs=7 2>&1"
    )


@pytest.mark.parametrize(
    ("output", "status"),
    [
        ("PENDING\n", "running"),
        ("RUNNING\n", "running"),
        ("COMPLETING\n", "running"),
        ("slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n", "running"),
        ("COMPLETED\n", "finished"),
        ("FAILED\n", "finished"),
        ("CANCELLED\n", "finished"),
        ("TIMEOUT\n", "finished"),
        ("OUT_OF_MEMORY\n", "finished"),
        ("REQUEUED\n", "running"),  # squeue(1): a completing job going back to the queue
        ("REQUEUE_HOLD\n", "running"),
        ("NODE_FAIL\n", "finished"),  # a lost node, no requeue: Scipion fails the protocol
        ("PREEMPTED\n", "finished"),
        ("slurm_load_jobs error: Invalid job id specified\n", "finished"),
        ("", "finished"),
    ],
)
def test_job_done_regex_tracks_slurm_states(output, status):
    text = hostsconf.render(queues.from_scontrol(PARTITIONS, NODES))
    assert check_status(output, pyworkflow_value(text, "JOB_DONE_REGEX")) == status


def test_an_empty_job_done_regex_is_what_broke_running_jobs():
    # the old role template's `JOB_DONE_REGEX =`: pyworkflow reads '' and every running job is "finished"
    assert check_status("RUNNING\n", "") == "finished"


def test_write_is_atomic_and_read_only_for_others(tmp_path):
    target = tmp_path / "hosts.conf"
    hostsconf.write(target, "x")
    assert target.read_text() == "x" and oct(target.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in tmp_path.iterdir()] == ["hosts.conf"]
