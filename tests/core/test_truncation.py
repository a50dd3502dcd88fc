"""Truncated expert bases: the directions kept against a hand count, the child materialised
from a truncated 16-bit basis against its float32 oracle, bad settings named before any model
is loaded, and a run whose genomes are read back against the basis they were made in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from cycleqd.core.genome import Basis, ExpertBasis, truncated_basis
from cycleqd.core.mutation import SVD, svd_dense
from cycleqd.core.taskvector import as_dense
from cycleqd.core.truncation import Truncation
from cycleqd.errors import ConfigError


def test_the_directions_kept_match_a_hand_count():
    S = torch.tensor([3.0, 2.0, 1.0])  # energies 9, 4, 1 of 14: shares 0.643, 0.929, 1
    assert Truncation(energy=0.5).keep(S) == 1
    assert Truncation(energy=0.9).keep(S) == 2
    assert Truncation(energy=13 / 14).keep(S) == 2  # exactly reached: no third direction
    assert Truncation(energy=0.93).keep(S) == 3
    assert Truncation(rank=0.5).keep(S) == 2  # ⌈1.5⌉
    assert Truncation(rank=0.1).keep(S) == 1
    assert Truncation(energy=0.93, rank=0.5).keep(S) == 2  # both: the fewer
    assert Truncation().keep(S) == 3 and Truncation().exact


def test_what_a_basis_keeps_is_reported_over_all_its_deltas():
    svds = {
        "a": SVD(torch.eye(3), torch.tensor([3.0, 2.0, 1.0]), torch.eye(3)),
        "b": SVD(torch.eye(2), torch.tensor([1.0, 1.0]), torch.eye(2)),
    }
    out, kept = Truncation(energy=0.9, dtype="bfloat16").apply(svds)
    assert [s.S.shape[0] for s in out.values()] == [2, 2]
    assert out["a"].U.dtype == torch.bfloat16 and out["a"].U.shape == (3, 2) and out["a"].Vh.shape == (2, 3)
    assert kept["energy"] == pytest.approx((9 + 4 + 2) / (14 + 2))
    assert kept["rank"] == pytest.approx(4 / 5)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_a_child_of_a_truncated_basis_equals_its_float32_oracle(dtype: str, tmp_path: Path):
    g = torch.Generator().manual_seed(0)
    deltas = {q: {"w": torch.randn(12, 8, generator=g), "b": torch.randn(8, generator=g)} for q in ("x", "y")}
    parts = {q: ExpertBasis({"w": svd_dense(d["w"])}, {"b": d["b"]}) for q, d in deltas.items()}
    truncation = Truncation(energy=0.8, dtype=dtype)
    cut = {}
    for q in parts:
        parts[q].save(tmp_path / f"{q}.safetensors")
        cut[q], kept, path = truncated_basis(parts[q], truncation, tmp_path / f"{q}.safetensors")
        assert 0.8 <= kept["energy"] < 1 and Path(path).is_file() and Path(path) != tmp_path / f"{q}.safetensors"
        assert ExpertBasis.load(path).svds["w"].U.dtype == truncation.torch_dtype  # read back as stored
    basis = Basis(["x", "y"], cut)
    c = np.random.default_rng(1).uniform(0, 1.5, basis.length).astype(np.float32)
    got = basis.delta(c, "w")
    assert got.dtype == torch.float32
    want = torch.zeros(12, 8, dtype=torch.float64)
    for q in ("x", "y"):
        s, blk = cut[q].svds["w"], basis.block(q, "w")
        coef = torch.as_tensor(c[blk.start : blk.stop], dtype=torch.float64)
        want += s.U.double() @ torch.diag(coef * s.S.double()) @ s.Vh.double()
    assert torch.allclose(got.double(), want, atol=1e-5)
    # the truncated expert is the best rank-r approximation of its delta, up to the storage's rounding
    r = cut["x"].svds["w"].S.shape[0]
    u, s, vh = torch.linalg.svd(deltas["x"]["w"])
    best = u[:, :r] @ torch.diag(s[:r]) @ vh[:r]
    tol = 1e-5 if dtype == "float32" else 0.05 * float(best.abs().max())
    assert torch.allclose(basis.delta(basis.expert("x"), "w"), best, atol=tol)
    assert basis.nbytes() == sum(
        t.numel() * t.element_size()
        for p in cut.values()
        for t in (*(x for s in p.svds.values() for x in (s.U, s.S, s.Vh)), *p.deltas.values())
    )


@pytest.mark.parametrize(
    "override, key, words",
    [
        ("basis.energy=0", "basis.energy", "must be a fraction in (0, 1]"),
        ("basis.energy=1.5", "basis.energy", "got 1.5"),
        ("basis.rank=2", "basis.rank", "must be a fraction in (0, 1]"),
        ("basis.dtype=int8", "basis.dtype", "must be one of float32, bfloat16, float16"),
    ],
)
def test_bad_settings_are_named_before_any_model_is_loaded(cache: Path, override: str, key: str, words: str):
    from cycleqd.run.components import build
    from tests.tiny import compose_tiny

    with pytest.raises(ConfigError) as e:
        build(compose_tiny(cache / "never-built", override))
    assert str(e.value).startswith(f"{key}: ") and words in str(e.value)
    assert not (cache / "never-built").exists()


def test_a_truncated_basis_needs_genomes(cache: Path):
    from cycleqd.run.components import build
    from tests.tiny import compose_tiny

    with pytest.raises(ConfigError, match=r"^basis: a truncated basis .* \(genome=false"):
        build(compose_tiny(cache, "basis.energy=0.9", "genome=false"))


def test_a_truncated_run_reads_its_genomes_back_against_its_own_basis(tmp_path: Path, cache: Path):
    from cycleqd.analysis.rundata import load_run
    from cycleqd.run.runner import run
    from tests.tiny import compose_lively

    summary = run(compose_lively(cache, "genome=true", "basis.energy=0.9", generations=4), tmp_path / "run")
    b = summary["basis"]
    assert b["energy"] == 0.9 and b["dtype"] == "float32"
    assert all(0.9 <= k["energy"] < 1 and k["rank"] < 1 for k in b["kept"].values())
    data = load_run(tmp_path / "run")
    basis = data.basis()
    assert basis.length == data.archives[data.tasks[0]].solution_dim
    # expert 0's genome read back: each of its mutated deltas has the truncated rank
    tv = data.vector(0)
    for name, s in basis.svds[data.tasks[0]].items():
        assert int(torch.linalg.matrix_rank(as_dense(tv[name]))) <= s.S.shape[0] < min(s.U.shape[0], s.Vh.shape[1])
