"""Special tokens, BOS/EOS flags, merges and chat template from a checkpoint's tokenizer files.

Follows gguf-py's SpecialVocab (as vendored with llama.cpp), which convert_hf_to_gguf.py
uses for every vocab type, so that the ids, flags and their order in the GGUF match:

1. tokenizer.json: merges, the normalizer's lowercase/strip-accents flags, and what the
   post-processor adds (ByteLevel: nothing; TemplateProcessing: the leading/trailing
   special tokens it wraps a sequence in, compared with tokenizer_config's bos/eos);
2. tokenizer_config.json: the chat template (or chat_template.jinja / .json beside it),
   add_<type>_token flags not already set, and <type>_token looked up among
   tokenizer.json's added tokens;
3. config.json: <type>_token_id for the types still unset.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from string import ascii_letters, digits
from typing import Any

from ..errors import LlamatoolError
from ..gguf_io import ValueType

SPECIAL_TYPES = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
# GGUF keys llama.cpp reads; a type without one (cls, ...) is not written, as gguf-py skips it.
ID_KEYS = {
    "bos": "tokenizer.ggml.bos_token_id",
    "eos": "tokenizer.ggml.eos_token_id",
    "unk": "tokenizer.ggml.unknown_token_id",
    "sep": "tokenizer.ggml.seperator_token_id",
    "pad": "tokenizer.ggml.padding_token_id",
    "mask": "tokenizer.ggml.mask_token_id",
    "eot": "tokenizer.ggml.eot_token_id",
    "eom": "tokenizer.ggml.eom_token_id",
}
ADD_KEYS = {"bos": "tokenizer.ggml.add_bos_token", "eos": "tokenizer.ggml.add_eos_token", "sep": "tokenizer.ggml.add_sep_token"}


def read_json_if_present(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LlamatoolError(f"{path}: not valid JSON ({e})") from None


def _token_content(entry) -> str | None:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict) and isinstance(entry.get("content"), str):
        return entry["content"]
    return None


def _special_id(spec) -> str | None:
    return (spec.get("SpecialToken") or {}).get("id") if isinstance(spec, dict) else None


def _sequence_id(spec) -> str | None:
    return (spec.get("Sequence") or {}).get("id") if isinstance(spec, dict) else None


def _merge_text(pair, where: str) -> str:
    # Since transformers 4.45 a merge may be a pair; a space inside a part is encoded as
    # U+0120 so that "a b" stays splittable (llama.cpp issue 9692).
    if isinstance(pair, str):
        return pair
    if isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair):
        return " ".join("".join(chr(ord(c) + 256) if c == " " else c for c in part) for part in pair)
    raise LlamatoolError(f"{where}: unknown merges format ({pair!r:.60})")


@dataclass
class SpecialVocab:
    n_vocab: int | None = None
    types: tuple[str, ...] = SPECIAL_TYPES
    merges: list[str] = field(default_factory=list)
    ids: dict[str, int] = field(default_factory=dict)
    add: dict[str, bool] = field(default_factory=dict)
    chat_template: str | list | None = None
    lowercase: bool | None = None
    strip_accents: bool | None = None

    def set_id(self, kind: str, tid: Any, where: str) -> None:
        if not isinstance(tid, int):
            return
        if tid < 0:
            raise LlamatoolError(f"{where}: invalid id {tid} for the {kind} token")
        if (self.n_vocab is None or tid < self.n_vocab) and kind not in self.ids:
            self.ids[kind] = tid

    # -- tokenizer.json ---------------------------------------------------------------
    def _read_normalizer(self, node) -> None:
        kind = node.get("type") if isinstance(node, dict) else None
        if kind == "Lowercase":
            self.lowercase = True
        elif kind == "StripAccents":
            self.strip_accents = True
        elif kind == "BertNormalizer":
            if "lowercase" in node:
                self.lowercase = node["lowercase"]
            if "strip_accents" in node:
                self.strip_accents = node["strip_accents"]
        elif kind == "Sequence":
            for child in node.get("normalizers") or []:
                self._read_normalizer(child)

    def _read_template(self, proc: dict, tc: dict, names: dict) -> None:
        """TemplateProcessing: is the single-sequence template wrapped in bos/eos, and does
        the pair template put a separator between A and B? (A crude reading, like gguf-py's.)"""
        single, pair = proc.get("single") or [], proc.get("pair") or []
        first = last = None
        if len(single) > 1:
            if first := _special_id(single[0]):
                if not tc:
                    names["bos"] = first
                elif first not in (names["bos"], names["cls"]):
                    if not names["bos"]:
                        tc["bos_token"] = names["bos"] = first
                    if not names["cls"]:
                        tc["cls_token"] = names["cls"] = first
                self.add["bos"] = first in (names["bos"], names["cls"])
            if last := _special_id(single[-1]):
                if not tc:
                    names["eos"] = last
                elif last != names["eos"]:
                    # the template ends with another token than eos: keep eos as eot/eom
                    for extra in ("eot", "eom"):
                        if extra not in self.types:
                            self.types = (*self.types, extra)
                            tc[f"{extra}_token"] = names["eos"]
                            break
                    tc["eos_token"] = names["eos"] = last
                self.add["eos"] = last == names["eos"]
        if not pair:
            return
        start = 1 if first and _special_id(pair[0]) == first else 0
        stop = -1 if last and _special_id(pair[-1]) == last else None
        pair = pair[start:stop]
        if not pair or _sequence_id(pair[0]) != "A" or _sequence_id(pair[-1]) != "B":
            return
        middle = pair[1:-1]
        if not middle:
            return
        add_sep = False
        if (entry := _special_id(middle[0])) and entry in (names["sep"], names["eos"]) and not last:
            add_sep = True
        if len(middle) == 2 and (entry := _special_id(middle[1])) and entry in (names["sep"], names["eos"]):
            add_sep = True
        self.add["sep"] = add_sep
        if add_sep and not names["sep"] and tc:
            tc["sep_token"] = names["eos"]

    def _read_post_processor(self, post, tc: dict) -> None:
        names = {k: tc.get(f"{k}_token") for k in ("bos", "cls", "eos", "sep")}
        if not names["bos"] and names["cls"] and tc:
            tc["bos_token"] = names["bos"] = names["cls"]
        if not names["eos"] and names["sep"] and tc:
            tc["eos_token"] = names["eos"] = names["sep"]
        if not isinstance(post, dict):
            return
        for proc in post.get("processors", [post]):
            kind = proc.get("type") if isinstance(proc, dict) else None
            if kind == "ByteLevel":
                self.add.setdefault("bos", False)
                self.add.setdefault("eos", False)
            elif kind == "RobertaProcessing":
                self.add.update(bos=True, eos=True, sep=True)
                if not names["cls"] and tc:
                    tc["cls_token"] = names["cls"] = proc.get("cls", [names["bos"]])[0]
                if not names["sep"] and tc:
                    tc["sep_token"] = names["sep"] = proc.get("sep", [names["eos"]])[0]
            elif kind == "TemplateProcessing":
                self._read_template(proc, tc, names)

    # -- tokenizer_config.json --------------------------------------------------------
    def _read_chat_template(self, folder: Path, tc: dict) -> None:
        alt = None
        jinja, as_json = folder / "chat_template.jinja", folder / "chat_template.json"
        if jinja.is_file():
            alt = jinja.read_text(encoding="utf-8")
            extra = sorted((folder / "additional_chat_templates").glob("*.jinja"))
            if extra:
                alt = [{"name": "default", "template": alt}] + [{"name": p.stem, "template": p.read_text(encoding="utf-8")} for p in extra]
        elif as_json.is_file():
            data = read_json_if_present(as_json)
            alt = data.get("chat_template") if isinstance(data, dict) else None
        template = tc.get("chat_template", alt)
        if template is None or isinstance(template, (str, list)):
            self.chat_template = template

    def _read_config_tokens(self, tc: dict, added_tokens: list, where: str) -> None:
        for kind in self.types:
            flag = tc.get(f"add_{kind}_token")
            if isinstance(flag, bool) and kind not in self.add:
                self.add[kind] = flag
            content = _token_content(tc.get(f"{kind}_token"))
            if content is None:
                continue
            tid = next((t.get("id") for t in added_tokens if isinstance(t, dict) and t.get("content") == content), None)
            self.set_id(kind, tid, where)

    # -- gguf fields ------------------------------------------------------------------
    def fields(self) -> list[tuple[str, Any, ValueType, ValueType | None]]:
        V = ValueType
        out: list[tuple[str, Any, ValueType, ValueType | None]] = []
        if self.merges:
            out.append(("tokenizer.ggml.merges", self.merges, V.ARRAY, V.STRING))
        out += [(ID_KEYS[k], tid, V.UINT32, None) for k, tid in self.ids.items() if k in ID_KEYS]
        out += [(ADD_KEYS[k], flag, V.BOOL, None) for k, flag in self.add.items() if k in ADD_KEYS]
        out += chat_template_fields(self.chat_template)
        if self.lowercase is not None:
            out.append(("tokenizer.ggml.normalizer.lowercase", bool(self.lowercase), V.BOOL, None))
        if self.strip_accents is not None:
            out.append(("tokenizer.ggml.normalizer.strip_accents", bool(self.strip_accents), V.BOOL, None))
        return out


def chat_template_fields(template) -> list[tuple[str, Any, ValueType, ValueType | None]]:
    """One template as tokenizer.chat_template; a named list as tokenizer.chat_template.<name>
    plus the tokenizer.chat_templates list (the 'default' one is the plain key)."""
    V = ValueType
    if not template:
        return []
    if isinstance(template, str):
        return [("tokenizer.chat_template", template, V.STRING, None)]
    out, names, default = [], [], None
    for choice in template:
        if not isinstance(choice, dict):
            continue
        name = "".join(c if c in ascii_letters + digits else "_" for c in str(choice.get("name", "")))
        text = choice.get("template")
        if not name or text is None:
            continue
        if name == "default":
            default = text
        else:
            names.append(name)
            out.append((f"tokenizer.chat_template.{name}", text, V.STRING, None))
    if names:
        out.append(("tokenizer.chat_templates", list(dict.fromkeys(names)), V.ARRAY, V.STRING))
    if default:
        out.append(("tokenizer.chat_template", default, V.STRING, None))
    return out


def _read_merges_txt(path: Path) -> list[str]:
    merges = []
    lines = path.read_text(encoding="utf-8").splitlines()
    if lines and lines[0].strip().startswith("#"):
        lines = lines[1:]
    for line in lines:
        parts = line.strip().split(None, 3)
        if len(parts) == 2:
            merges.append(f"{parts[0]} {parts[1]}")
    return merges


def load_special_vocab(folder: Path, *, load_merges: bool, n_vocab: int | None = None, types=SPECIAL_TYPES) -> SpecialVocab:
    sv = SpecialVocab(n_vocab=n_vocab, types=tuple(types))
    tok_path, tc_path = folder / "tokenizer.json", folder / "tokenizer_config.json"
    tokenizer = read_json_if_present(tok_path)
    tc = read_json_if_present(tc_path)
    tc = dict(tc) if isinstance(tc, dict) else None
    added_tokens: list = []
    if isinstance(tokenizer, dict):
        if load_merges:
            merges = (tokenizer.get("model") or {}).get("merges")
            if isinstance(merges, list) and merges:
                sv.merges = [_merge_text(m, str(tok_path)) for m in merges]
        if normalizer := tokenizer.get("normalizer"):
            sv._read_normalizer(normalizer)
        added_tokens = tokenizer.get("added_tokens") or []
        sv._read_post_processor(tokenizer.get("post_processor"), tc if tc is not None else {})
    if tc:
        sv._read_chat_template(folder, tc)
        sv._read_config_tokens(tc, added_tokens, str(tc_path))
    config = read_json_if_present(folder / "config.json")
    if isinstance(config, dict):
        text_config = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
        for kind in sv.types:
            tid = config.get(f"{kind}_token_id")
            sv.set_id(kind, tid if tid is not None else text_config.get(f"{kind}_token_id"), str(folder / "config.json"))
    if load_merges and not sv.merges and (folder / "merges.txt").is_file():
        sv.merges = _read_merges_txt(folder / "merges.txt")
    return sv
