"""ProtClusterCheck: runs for a few seconds and writes what the queue gave it (host, Slurm job, CPUs, GPUs)
and when it started and ended, to extra/check.json."""

import json
import os
import socket
import time

from pyworkflow.protocol import params
from pyworkflow.protocol.constants import GPU_LIST

try:  # the EM domain lists only EMProtocol subclasses; plain pyworkflow (tests) lists Protocol ones
    from pwem.protocols import EMProtocol as _Base
except ImportError:
    from pyworkflow.protocol import Protocol as _Base

SLURM_VARIABLES = (
    "SLURM_JOB_ID",
    "SLURM_JOB_PARTITION",
    "SLURM_CPUS_PER_TASK",
    "SLURM_NTASKS",
    "SLURM_GPUS_ON_NODE",
    "SLURM_JOB_GPUS",
    "CUDA_VISIBLE_DEVICES",
)


class ProtClusterCheck(_Base):
    """Record where and when a queue ran this job and which GPUs it was given."""

    _label = "cluster check"

    def _defineParams(self, form):
        form.addSection(label="Check")
        form.addParam("seconds", params.FloatParam, default=2.0, label="Run for (seconds)")
        form.addParam(
            "failWith",
            params.StringParam,
            default="",
            label="Fail with this message",
            help="Makes the protocol fail on purpose (to check that failures are reported).",
        )
        form.addHidden(GPU_LIST, params.StringParam, default="0", label="GPU IDs")
        form.addParallelSection(threads=1, mpi=1)

    def _insertAllSteps(self):
        self._insertFunctionStep(self.recordStep)

    def recordStep(self):
        record = {"host": socket.gethostname(), "start": time.time()}
        record.update({name: os.environ.get(name) for name in SLURM_VARIABLES})
        time.sleep(self.seconds.get())
        if self.failWith.get():
            raise RuntimeError(self.failWith.get())
        record["end"] = time.time()
        with open(self._getExtraPath("check.json"), "w") as f:
            json.dump(record, f)
