"""The CUDA path: a child materialised on the GPU equals the CPU one (exact and truncated
16-bit bases, the bases placed on the GPU or streamed from host memory), and a short demo run
with ``device=cuda``. Skipped without a CUDA device; ``benchmarks/gpu_check.sh run`` runs them
on a GPU machine against the installed package, so this file imports nothing from ``tests``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cycleqd.core.genome import Basis, ExpertBasis, place_basis
from cycleqd.core.mutation import svd_dense
from cycleqd.core.taskvector import TaskVector
from cycleqd.core.truncation import Truncation
from cycleqd.evaluation.scoring import ResidentModel

SKIPPED_BASELINES = (
    "ties",
    "dare_linear",
    "dare_ties",
    "breadcrumbs",
    "breadcrumbs_ties",
    "della",
    "della_linear",
    "model_stock",
)
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


def _basis(truncation: Truncation, dim: int = 256, layers: int = 4) -> tuple[Basis, dict[str, TaskVector]]:
    g = torch.Generator().manual_seed(0)
    names = [f"layer{i}_{m}" for i in range(layers) for m in ("up", "down")]
    experts = {t: TaskVector({n: torch.randn(dim, dim, generator=g) / dim for n in names}) for t in "abc"}
    parts = {}
    for t, tv in experts.items():
        svds = {n: svd_dense(d) for n, d in tv.items()}
        parts[t] = ExpertBasis(truncation.apply(svds)[0] if not truncation.exact else svds, {})
    return Basis(list(experts), parts), experts


@pytest.mark.parametrize(
    "truncation",
    [Truncation(), Truncation(energy=0.9), Truncation(rank=0.25, dtype="bfloat16"), Truncation(dtype="float16")],
    ids=["exact", "energy-0.9", "rank-0.25-bf16", "fp16"],
)
@pytest.mark.parametrize("placed", [True, False], ids=["bases-on-gpu", "bases-streamed"])
def test_a_child_materialised_on_cuda_equals_the_cpu_one(truncation: Truncation, placed: bool):
    basis, _ = _basis(truncation)
    c = np.random.default_rng(0).uniform(0, 1.2, basis.length).astype(np.float32)
    cpu = {n: basis.delta(c, n, "cpu") for n in basis.names}
    if placed:
        basis.to("cuda")
    for n in basis.names:
        gpu = basis.delta(c, n, "cuda")
        assert gpu.device.type == "cuda" and gpu.dtype == torch.float32
        # float32 products on two devices: equal up to their summation order
        torch.testing.assert_close(gpu.cpu(), cpu[n], rtol=1e-4, atol=1e-5)


def test_place_basis_moves_the_bases_to_the_gpu_when_they_fit():
    basis, _ = _basis(Truncation())
    where = place_basis(basis, torch.device("cuda"))
    assert "on cuda" in where
    assert all(s.U.device.type == "cuda" for svds in basis.svds.values() for s in svds.values())


def test_the_resident_model_writes_a_genome_on_cuda_as_on_the_cpu():
    basis, _ = _basis(Truncation(), dim=64, layers=2)
    model = torch.nn.Module()
    for n in basis.names:
        model.register_parameter(n, torch.nn.Parameter(torch.randn(64, 64)))
    view = basis.view(np.random.default_rng(1).uniform(0, 1, basis.length).astype(np.float32))
    out = {}
    for device in ("cpu", "cuda"):
        m = model.to(device)
        resident = ResidentModel(m, basis.names)
        with resident.applied(view):
            out[device] = {k: p.detach().cpu().clone() for k, p in m.named_parameters()}
        assert all(torch.equal(p.detach(), resident.base[k]) for k, p in m.named_parameters())  # restored
    for k in out["cpu"]:
        torch.testing.assert_close(out["cuda"][k], out["cpu"][k], rtol=1e-4, atol=1e-5)


def test_a_short_demo_run_on_cuda(tmp_path: Path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "disabled", "CYCLEQD_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cycleqd.cli",
            "run",
            "experiment=demo",
            "device=cuda",
            "generations=12",
            "quiet=true",
            # a check of the path, not of the scores: one static merge (the tasks' items stay: they
            # key the shipped weights, which a change would retrain)
            *(f"baselines.{b}.scales=[]" for b in SKIPPED_BASELINES),
            "baselines.task_arithmetic.scales=[1.0]",
            f"hydra.run.dir={run_dir}",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["generations"] == 12 and not summary["failed"]
    assert all(0 <= v <= 1 for v in summary["final"].values())
