"""smollm3: SmolLM3 (convert_hf_to_gguf.py's SmolLM3Model, llama.cpp's src/models/smollm3.cpp).

LLaMA (same converter: Q/K permutation, llama keys and vocab touches) with RoPE left out
of every fourth layer (NoPE: layers 3, 7, 11, ...). llama.cpp fixes that step at 4 rather
than reading it from the file, so a checkpoint whose no_rope_layers follow another pattern
would run wrongly there: it is refused.
"""

from __future__ import annotations

from ..errors import LlamatoolError
from .family import ForwardSwitches
from .llama import Llama

NO_ROPE_STEP = 4  # llama.cpp's hparams.n_no_rope_layer_step for smollm3


class SmolLM3(Llama):
    arch = "smollm3"
    hf_classes = ("SmolLM3ForCausalLM",)
    head_dim_from_heads = False
    default_rope_theta = 2000000.0
    quantize_70b_layers = None
    forward = ForwardSwitches(nope_every=NO_ROPE_STEP)
    config_defaults = {
        "smollm3": {
            "vocab_size": 128256,
            "hidden_size": 2048,
            "intermediate_size": 11008,
            "num_hidden_layers": 36,
            "num_attention_heads": 16,
            "num_key_value_heads": 4,
            "max_position_embeddings": 32768,
            "rms_norm_eps": 1e-6,
            "tie_word_embeddings": True,
            "attention_bias": False,
            "mlp_bias": False,
        }
    }

    def check_config(self, cfg: dict, path) -> None:
        n_layer = cfg.get("num_hidden_layers", 0)
        expected = [int((i + 1) % NO_ROPE_STEP != 0) for i in range(n_layer)]
        given = cfg.get("no_rope_layers")
        if given is not None and list(given) != expected:
            raise LlamatoolError(f"{path}: no_rope_layers {given} is not llama.cpp's NoPE pattern (every {NO_ROPE_STEP}th layer)")
