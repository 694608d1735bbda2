"""The model families llamatool converts and runs: one module per GGUF architecture.

    family.py   what a family declares (the LLaMA layout as the default) and the keys
                every text model writes
    llama.py    llama (LLaMA 1-3, Mistral, SmolLM2)
    qwen2.py    qwen2 (Qwen2, Qwen2.5)
    qwen3.py    qwen3 (Qwen3 dense)
    smollm3.py  smollm3 (SmolLM3: LLaMA with NoPE layers)
    gemma2.py   gemma2 (Gemma 2: sandwich norms, GELU, soft-caps, sliding window)
    gemma3.py   gemma3 (Gemma 3 text: gemma2 without soft-caps, Q/K norms, 5:1 local:global)
    phi3.py     phi3 (Phi-3, Phi-3.5, Phi-4: fused QKV and gate|up, LongRoPE)

Adding a family: a module with a Family subclass, listed in FAMILIES, plus kernels only
where the forward pass meets an operation it does not have yet.
"""

from __future__ import annotations

from ..errors import LlamatoolError
from .family import Family, ForwardSwitches, LayerTensor, ROPE_NEOX, ROPE_NORM  # noqa: F401
from .llama import Llama
from .qwen2 import Qwen2
from .qwen3 import Qwen3
from .gemma2 import Gemma2
from .gemma3 import Gemma3
from .phi3 import Phi3
from .smollm3 import SmolLM3

FAMILIES: tuple[Family, ...] = (Llama(), Qwen2(), Qwen3(), SmolLM3(), Gemma2(), Gemma3(), Phi3())
_BY_ARCH = {f.arch: f for f in FAMILIES}
_BY_HF_CLASS = {cls: f for f in FAMILIES for cls in f.hf_classes}


def supported_architectures() -> tuple[str, ...]:
    """GGUF general.architecture values llamatool runs."""
    return tuple(_BY_ARCH)


def supported_hf_classes() -> tuple[str, ...]:
    """Hugging Face architectures llamatool converts (LLaMAForCausalLM is an old alias)."""
    return tuple(c for c in _BY_HF_CLASS if c != "LLaMAForCausalLM")


def by_arch(arch: str, where: str) -> Family:
    """The family of a GGUF file's general.architecture, or a one-line refusal."""
    family = _BY_ARCH.get(arch)
    if family is None:
        raise LlamatoolError(f"{where}: architecture {arch!r} is not supported (llamatool runs: {', '.join(_BY_ARCH)})")
    return family


def by_hf_class(hf_class: str, where: str) -> Family:
    """The family converting a config.json's architectures[0], or a one-line refusal."""
    family = _BY_HF_CLASS.get(hf_class)
    if family is None:
        raise LlamatoolError(
            f"{where}: architecture {hf_class!r} is not supported (llamatool converts {', '.join(supported_hf_classes())})"
        )
    return family


def quantize_70b_layers() -> dict[str, int]:
    """llama-quantize's "70B" layer count by architecture, for the families that have one."""
    return {f.arch: f.quantize_70b_layers for f in FAMILIES if f.quantize_70b_layers}


def by_model_type(model_type) -> Family | None:
    """The family whose transformers config class a config.json's model_type names, if any."""
    return next((f for f in FAMILIES if model_type in f.config_defaults), None)
