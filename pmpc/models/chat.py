"""The chat codec: a prompt rendered with a template, text <-> ids, left-padded batches.

Templates (``system``):
  * ``default`` — the model's chat template with no system message: the template's own default
    applies (SmolLM2 inserts "You are a helpful AI assistant named SmolLM ...").
  * ``none``    — an empty system turn, so templates that insert a default cannot (a template
    without a system role gets the user turn alone).
  * ``paper``   — the seed paper's: system "Below is an instruction that describes a task. Write a
    response that appropriately completes the request.", user "Instruction: {prompt}"; a model
    without a chat template gets the paper's raw form "<system>\\nInstruction: {p}\\nResponse:".
  * any other string is used as the system message.
Models without a chat template (stories260K, tiny random models) get the prompt text itself.
"""
from __future__ import annotations

from typing import Sequence

import torch

from pmpc.errors import UserError

PAPER_SYSTEM = ("Below is an instruction that describes a task. Write a response that appropriately "
                "completes the request.")


class ByteTokenizer:
    """A stand-in tokenizer for models shipped without one (tiny random test models): characters
    map onto the vocabulary, id 0 pads, id 1 ends. Enough to exercise generation end to end."""

    chat_template = None

    def __init__(self, vocab: int):
        if vocab < 4:
            raise UserError("vocabulary too small for the byte stand-in tokenizer")
        self.vocab = vocab
        self.pad_token_id, self.eos_token_id = 0, 1

    def encode(self, text: str) -> list[int]:
        return [2 + (ord(c) - 32) % (self.vocab - 2) for c in text]

    def decode(self, ids) -> str:
        return "".join(chr(32 + (i - 2) % 95) for i in ids if i >= 2)


class Codec:
    """Text <-> ids and the prompt template, for an HF tokenizer or the byte stand-in."""

    def __init__(self, tok, model=None):
        if tok is None:
            tok = ByteTokenizer(model.config.vocab_size)
        self.tok = tok
        self.byte = isinstance(tok, ByteTokenizer)
        if self.byte:
            self.pad_id, self.eos_ids = tok.pad_token_id, [tok.eos_token_id]
        else:
            gc = getattr(model, "generation_config", None) if model is not None else None
            eos = getattr(gc, "eos_token_id", None) if gc is not None else None
            eos = eos if eos is not None else tok.eos_token_id
            self.eos_ids = [e for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None]
            pad = tok.pad_token_id
            if pad is None and gc is not None:
                pad = getattr(gc, "pad_token_id", None)
            self.pad_id = pad if pad is not None else (self.eos_ids[0] if self.eos_ids else 0)

    @property
    def has_chat(self) -> bool:
        return not self.byte and bool(getattr(self.tok, "chat_template", None))

    def render(self, prompt: str, system: str = "default") -> str:
        if system == "paper":
            sys_msg, user = PAPER_SYSTEM, f"Instruction: {prompt}"
        elif system == "none":
            sys_msg, user = "", prompt
        elif system == "default":
            sys_msg, user = None, prompt
        else:
            sys_msg, user = system, prompt
        if not self.has_chat:
            if system == "paper":
                return f"{PAPER_SYSTEM}\nInstruction: {prompt}\nResponse:"
            return f"{sys_msg}\n{user}" if sys_msg else user
        msgs = [{"role": "user", "content": user}]
        if sys_msg is not None:
            try:
                return self.tok.apply_chat_template([{"role": "system", "content": sys_msg}] + msgs,
                                                    tokenize=False, add_generation_prompt=True)
            except Exception:  # templates without a system role (raise from jinja): fold it in
                if sys_msg:
                    msgs = [{"role": "user", "content": f"{sys_msg}\n\n{user}"}]
        return self.tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)

    def encode(self, text: str) -> list[int]:
        if self.byte:
            return self.tok.encode(text)
        # a chat template writes its own BOS into the text; a raw prompt gets the tokenizer's
        return self.tok(text, add_special_tokens=not self.has_chat)["input_ids"]

    def decode(self, ids) -> str:
        ids = list(ids)
        for i, t in enumerate(ids):
            if t in self.eos_ids:
                ids = ids[:i]
                break
        if self.byte:
            return self.tok.decode(ids)
        return self.tok.decode(ids, skip_special_tokens=True).strip()

    def batch(self, texts: Sequence[str], device) -> dict:
        """Left-padded input_ids / attention_mask for rendered texts."""
        ids = [self.encode(t) for t in texts]
        n = max(len(x) for x in ids)
        inp = torch.full((len(ids), n), self.pad_id, dtype=torch.long)
        att = torch.zeros((len(ids), n), dtype=torch.long)
        for r, x in enumerate(ids):
            if x:
                inp[r, n - len(x):] = torch.tensor(x)
                att[r, n - len(x):] = 1
        return {"input_ids": inp.to(device), "attention_mask": att.to(device)}
