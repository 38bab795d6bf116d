"""On a machine with an NVIDIA GPU and the roles applied (make test-gpu): the driver answers through
nvidia-smi, and the default CUDA toolkit (/usr/local/cuda) compiles a kernel that runs on every GPU and
computes the right numbers. Skips, saying why, where there is no driver, no GPU or no nvcc."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu

KERNEL = r"""
#include <cstdio>
#include <cuda_runtime.h>

__global__ void saxpy(int n, float a, const float *x, float *y) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a * x[i] + y[i];
}

int main() {
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) { printf("NO-DEVICE\n"); return 2; }
    const int n = 1 << 20;
    for (int d = 0; d < devices; ++d) {
        cudaSetDevice(d);
        cudaDeviceProp prop;
        cudaGetDeviceProperties(&prop, d);
        float *x, *y;
        cudaMallocManaged(&x, n * sizeof(float));
        cudaMallocManaged(&y, n * sizeof(float));
        for (int i = 0; i < n; ++i) { x[i] = 1.0f; y[i] = 2.0f; }
        saxpy<<<(n + 255) / 256, 256>>>(n, 3.0f, x, y);
        cudaError_t err = cudaDeviceSynchronize();
        int bad = 0;
        for (int i = 0; i < n; ++i) bad += (y[i] != 5.0f);
        printf("GPU %d %s cc=%d.%d err=%s bad=%d\n", d, prop.name, prop.major, prop.minor,
               cudaGetErrorString(err), bad);
        cudaFree(x);
        cudaFree(y);
        if (err != cudaSuccess || bad) return 1;
    }
    return 0;
}
"""


def nvidia_smi(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def gpus() -> list[dict[str, str]]:
    if not shutil.which("nvidia-smi"):
        pytest.skip("no NVIDIA driver here (nvidia-smi not found): run make test-gpu on a GPU machine")
    query = nvidia_smi("--query-gpu=index,name,uuid,driver_version,compute_cap", "--format=csv,noheader")
    if query.returncode != 0:
        pytest.skip(f"nvidia-smi finds no usable GPU here: {query.stdout.strip() or query.stderr.strip()}")
    keys = ("index", "name", "uuid", "driver_version", "compute_cap")
    return [
        dict(zip(keys, (v.strip() for v in line.split(",")), strict=True))
        for line in query.stdout.splitlines()
    ]


@pytest.fixture(scope="module")
def nvcc() -> Path:
    for candidate in (os.environ.get("CUDA_HOME", "/usr/local/cuda") + "/bin/nvcc", shutil.which("nvcc")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    pytest.skip("no CUDA toolkit here (no /usr/local/cuda/bin/nvcc): apply roles/cuda first")


def test_nvidia_smi_reports_every_gpu_with_the_driver(gpus):
    assert gpus, "nvidia-smi listed no GPU"
    versions = {g["driver_version"] for g in gpus}
    assert len(versions) == 1, versions  # one driver for all GPUs
    (version,) = versions
    # the user-space library is the same version as the loaded kernel module (no mismatch)
    module = Path("/proc/driver/nvidia/version").read_text()
    assert version in module, module


def test_nvcc_builds_a_kernel_that_runs_on_every_gpu(gpus, nvcc, tmp_path):
    source = tmp_path / "saxpy.cu"
    source.write_text(KERNEL)
    build = subprocess.run([str(nvcc), "-O2", "-o", str(tmp_path / "saxpy"), str(source)],
                           capture_output=True, text=True, timeout=300, check=False)  # fmt: skip
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(tmp_path / "saxpy")], capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = [line for line in run.stdout.splitlines() if line.startswith("GPU ")]
    assert len(lines) == len(gpus), run.stdout
    for line, gpu in zip(lines, gpus, strict=True):
        assert "err=no error bad=0" in line, line
        assert f"cc={gpu['compute_cap']}" in line, (line, gpu)  # the runtime and the driver agree
