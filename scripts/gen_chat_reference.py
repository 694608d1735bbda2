"""Record Hugging Face transformers' renderings of chat templates: tests/data/chat_reference.json.

Needs transformers (its apply_chat_template renderer). Run from the repository root:

    .venv/bin/python scripts/gen_chat_reference.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from transformers.utils.chat_template_utils import render_jinja_template  # noqa: E402

from llamatool.gguf_io import GGUFReader  # noqa: E402
from tests.chat_cases import CONVERSATIONS, KNOWN  # noqa: E402
from tests.tokenizer_cases import VECTORS_DIR  # noqa: E402

OUT = ROOT / "tests" / "data" / "chat_reference.json"
MODELS = {
    "smollm2": ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf",
    "phi-3": VECTORS_DIR / "ggml-vocab-phi-3.gguf",
}


def model_template(path: Path) -> tuple[str, str, str]:
    r = GGUFReader(path)
    tokens = r.get("tokenizer.ggml.tokens")
    return r.get("tokenizer.chat_template"), tokens[r.get("tokenizer.ggml.bos_token_id")], tokens[r.get("tokenizer.ggml.eos_token_id")]


def main() -> None:
    templates = dict(KNOWN)
    for name, path in MODELS.items():
        templates[name] = model_template(path)
    out = {}
    for name, (source, bos, eos) in templates.items():
        cases = []
        for conv_name, messages in CONVERSATIONS.items():
            for add_generation_prompt in (True, False):
                try:
                    rendered, _ = render_jinja_template(
                        [messages], chat_template=source, add_generation_prompt=add_generation_prompt, bos_token=bos, eos_token=eos
                    )
                    expected = rendered[0]
                except Exception as e:  # the template itself refuses (raise_exception)
                    expected = {"error": str(e)}
                cases.append({"conversation": conv_name, "add_generation_prompt": add_generation_prompt, "expected": expected})
        out[name] = cases
    OUT.write_text(json.dumps(out, ensure_ascii=True, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
