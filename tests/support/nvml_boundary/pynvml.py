"""`pynvml` for an agent *process* on a machine without a GPU: this folder goes first on PYTHONPATH and the
module replaces itself with tests.support.fake_pynvml's stand-in (one A10G at 37 % and 3 of 24 GiB).
Only the NVML boundary is fixed; the agent's own sampler and routes run unchanged."""

import sys

from tests.support.fake_pynvml import FakeGpu, FakePynvml

sys.modules[__name__] = FakePynvml([FakeGpu()])
