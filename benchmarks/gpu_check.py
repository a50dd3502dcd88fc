"""Evaluation throughput and child materialisation at SmolLM2-135M's shape on the GPU against
this machine's CPU, side by side in one run (``benchmarks/gpu_check.sh run`` calls it).

The weights are random (the shape is what costs), so no model file travels: a base of
SmolLM2-135M's config, three full-weight experts whose deltas decay as fine-tunes' do, their
bases exact and truncated. Materialising writes θ0 + τ of every 2-D weight, as the resident
model does; throughput is greedy generation of a batch of prompts.

    python benchmarks/gpu_check.py [--batch 32] [--new-tokens 16] [--repeats 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from cycleqd.core.genome import Basis, ExpertBasis
from cycleqd.core.mutation import SVD
from cycleqd.core.truncation import Truncation

# SmolLM2-135M-Instruct's config.json
SMOLLM2 = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=49152,
    max_position_embeddings=8192,
    tie_word_embeddings=True,
)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int) -> float:
    fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / repeats


def model_of(device: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**SMOLLM2)).to(device).eval()


def expert_svds_of(model) -> dict[str, dict[str, SVD]]:
    """Three experts' SVDs, made as factors (U, S, Vᵀ with S_j ∝ 1/j) rather than decomposed."""
    g = torch.Generator().manual_seed(0)
    out = {}
    for t in ("a", "b", "c"):
        svds = {}
        for n, p in model.named_parameters():
            if p.dim() != 2 or "embed" in n:
                continue
            m, k = p.shape
            r = min(m, k)
            u = torch.linalg.qr(torch.randn(m, r, generator=g))[0]
            v = torch.linalg.qr(torch.randn(k, r, generator=g))[0]
            svds[n] = SVD(u, 0.01 / torch.arange(1, r + 1, dtype=torch.float32), v.T.contiguous())
        out[t] = svds
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--prompt-tokens", type=int, default=48)
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if len(devices) == 1:
        print("no CUDA device: the CPU's figures alone")
    else:
        print(f"GPU: {torch.cuda.get_device_name(0)}; CPU: {torch.get_num_threads()} threads")
    cpu_model = model_of("cpu")
    full = expert_svds_of(cpu_model)
    names = sorted(full["a"])
    settings = [("exact", Truncation()), ("energy 0.99, bfloat16", Truncation(energy=0.99, dtype="bfloat16"))]
    rows = []
    for device in devices:
        model = cpu_model if device == "cpu" else model_of(device)
        params = dict(model.named_parameters())
        base = {n: params[n].detach().clone() for n in names}
        for label, t in settings:
            parts = {q: ExpertBasis(s if t.exact else t.apply(s)[0], {}) for q, s in full.items()}
            basis = Basis(list(parts), parts)
            if device != "cpu":
                basis.to(device)
            c = np.random.default_rng(0).uniform(0, 1, basis.length).astype(np.float32)

            @torch.no_grad()
            def write() -> None:
                for n in names:
                    params[n].copy_(base[n] + basis.delta(c, n, device))

            ms = 1e3 * timed(write, device, a.repeats)
            rows.append(
                (device, f"materialise a child ({label}, {basis.nbytes() / 2**20:.0f} MiB of bases)", f"{ms:.1f} ms")
            )
        ids = torch.randint(
            0, SMOLLM2["vocab_size"], (a.batch, a.prompt_tokens), generator=torch.Generator().manual_seed(1)
        )
        ids = ids.to(device)

        @torch.no_grad()
        def generate() -> None:
            model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=a.new_tokens,
                min_new_tokens=a.new_tokens,
                do_sample=False,
                pad_token_id=0,
            )

        s = timed(generate, device, a.repeats)
        rows.append(
            (
                device,
                f"greedy generation, {a.batch} prompts x {a.new_tokens} new tokens",
                f"{a.batch * a.new_tokens / s:.0f} tokens/s",
            )
        )
    width = max(len(r[1]) for r in rows)
    for device, what, value in rows:
        print(f"{device:6s}{what:{width + 2}s}{value:>16s}")


if __name__ == "__main__":
    main()
