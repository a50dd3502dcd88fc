"""Truncated expert bases, side by side in one run: what each setting keeps of the demo's
experts, the bytes of three full-weight experts' bases and the model at the Llama-3-8B shape
(meta device, no weights), and the time to materialise a child on this CPU.

    python benchmarks/truncation.py [--dim 1024] [--layers 8] [--repeats 3]

The accuracy each setting costs is measured by runs, not here (docs/genomes.md):
    cycleqd run -m experiment=demo 'basis.energy=null,0.999,0.99,0.9'
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch
from genome import timed  # benchmarks/genome.py, beside this file

from cycleqd.core.genome import Basis, ExpertBasis
from cycleqd.core.mutation import expert_svds, svd_dense
from cycleqd.core.taskvector import TaskVector
from cycleqd.core.truncation import Truncation
from cycleqd.tables import format_table

GIB = 2**30
BUDGET_GIB = 60  # per evaluator: an 80 GB GPU keeps about 20 GB for activations and the KV cache
SETTINGS = [
    ("exact", Truncation()),
    ("exact, bfloat16", Truncation(dtype="bfloat16")),
    ("rank 0.25", Truncation(rank=0.25)),
    ("rank 0.25, bfloat16", Truncation(rank=0.25, dtype="bfloat16")),
    ("rank 0.1, bfloat16", Truncation(rank=0.1, dtype="bfloat16")),
    ("rank 0.05, bfloat16", Truncation(rank=0.05, dtype="bfloat16")),
    ("rank 0.02, bfloat16", Truncation(rank=0.02, dtype="bfloat16")),
]


def print_table(header, rows, align) -> None:
    print("\n".join(format_table(header, rows, align=align, sep="  ")))


def demo_kept() -> None:
    """What each energy keeps of the demo's shipped experts (their deltas' spectra)."""
    from hydra import compose, initialize_config_dir

    from cycleqd.models.experts import expert_vectors
    from cycleqd.models.loading import load_model
    from cycleqd.models.providers import locate
    from cycleqd.run.components import build
    from cycleqd.run.configs import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["experiment=demo"])
    c = build(cfg)
    base_dir, expert_dirs, fmt = locate(c.model, c.experts, c.tasks)
    model, _ = load_model(base_dir, "cpu")
    experts = expert_vectors(model, expert_dirs, fmt, key="experts")
    svds = {t: expert_svds(tv) for t, tv in experts.items()}
    rows = []
    for energy in (0.9, 0.99, 0.999):
        kept = {t: Truncation(energy=energy).apply(s)[1] for t, s in svds.items()}
        rows.append(
            [f"energy {energy}"]
            + [f"{100 * kept[t]['rank']:.1f} %" for t in experts]
            + [f"{100 * np.mean([k['rank'] for k in kept.values()]):.1f} %"]
        )
    print("The demo's full-weight experts: the fraction of each delta's directions an energy keeps")
    print_table(["setting", *experts, "mean"], rows, "<" + ">" * (len(experts) + 1))


def llama3_8b_table() -> None:
    from genome import llama3_8b_shapes

    shapes = llama3_8b_shapes()
    mutated = {n: s for n, s in shapes.items() if len(s) == 2 and "embed" not in n and "lm_head" not in n}
    whole = sum(int(np.prod(s)) for n, s in shapes.items() if n not in mutated)
    model_bytes = 2 * sum(int(np.prod(s)) for s in shapes.values())  # bfloat16 weights
    rows = []
    for label, t in SETTINGS:
        size = torch.tensor([], dtype=t.torch_dtype).element_size()
        n = 0
        for rows_, cols in mutated.values():
            k = min(rows_, cols)
            r = k if t.rank in (None, 1) else math.ceil(t.rank * k)
            n += r * rows_ + r + r * cols  # U, S, Vᵀ of the kept directions
        per_expert = (n + whole) * size
        total = 3 * per_expert + model_bytes
        rows.append(
            [label, f"{per_expert / GIB:.1f}", f"{total / GIB:.1f}", "yes" if total <= BUDGET_GIB * GIB else "no"]
        )
    print(
        f"\nLlama-3-8B shape (meta device): one full-weight expert's basis, and three experts' bases with the "
        f"model (bfloat16, {model_bytes / GIB:.1f} GiB) per evaluator; the deltas kept whole (embeddings, "
        f"head, norms) in the basis's dtype"
    )
    print_table(["setting", "per expert GiB", "per evaluator GiB", f"<= {BUDGET_GIB} GiB"], rows, "<>>>")


def materialise_table(dim: int, layers: int, repeats: int) -> None:
    g = torch.Generator().manual_seed(0)
    names = [f"model.layers.{i}.mlp.{m}.weight" for i in range(layers) for m in ("up_proj", "down_proj")]
    # a spectrum that decays as fine-tunes' do (s_j ∝ 1/j): energies then keep few directions
    spectrum = 1.0 / torch.arange(1, dim + 1, dtype=torch.float32)
    experts = {}
    for t in "abc":
        deltas = {}
        for n in names:
            q1, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g))
            q2, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g))
            deltas[n] = (q1 * spectrum) @ q2.T
        experts[t] = TaskVector(deltas)
    full = {t: {n: svd_dense(d) for n, d in tv.items()} for t, tv in experts.items()}
    settings = [*SETTINGS, ("energy 0.99", Truncation(energy=0.99)), ("energy 0.9", Truncation(energy=0.9))]
    rows = []
    base = {n: torch.zeros(dim, dim) for n in names}
    exact_ms = None
    for label, t in settings:
        parts = {q: ExpertBasis(t.apply(s)[0] if not t.exact else s, {}) for q, s in full.items()}
        basis = Basis(list(experts), parts)
        c = np.random.default_rng(0).uniform(0, 1, basis.length).astype(np.float32)
        ms = 1e3 * timed(lambda: [base[n].add_(basis.delta(c, n)) for n in names], repeats)
        exact_ms = exact_ms or ms
        kept = np.mean([t.apply(s)[1]["rank"] for s in full.values()]) if not t.exact else 1.0
        rows.append(
            [label, f"{100 * kept:.1f} %", f"{basis.nbytes() / 2**20:.0f}", f"{ms:.0f}", f"{exact_ms / ms:.1f}x"]
        )
    print(
        f"\nMaterialising one child θ0 + τ: {len(names)} modules of {dim}x{dim}, three full-rank experts "
        f"(spectra s_j ∝ 1/j), {torch.get_num_threads()} threads, mean of {repeats}"
    )
    print_table(["setting", "directions kept", "basis MiB", "ms", "speed-up"], rows, "<>>>>")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-demo", action="store_true")
    a = p.parse_args()
    if not a.skip_demo:
        demo_kept()
    llama3_8b_table()
    materialise_table(a.dim, a.layers, a.repeats)


if __name__ == "__main__":
    main()
