"""exllamav2's pure-Python tokenizer and embedding containers, as a reference on a CPU machine.

exllamav2 imports its compiled CUDA extension when the package is imported, though nothing used
here calls it. Tests put a placeholder module under the extension's name first, so the import
succeeds without CUDA; product code never imports exllamav2 this way.
"""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from worker.span import Span

sys.modules.setdefault("exllamav2_ext", types.ModuleType("exllamav2_ext"))

from exllamav2.config import ExLlamaV2Config, read  # noqa: E402
from exllamav2.generator.dynamic_embeddings import ExLlamaV2MMEmbedding  # noqa: E402
from exllamav2.tokenizer.tokenizer import ExLlamaV2Tokenizer  # noqa: E402

# Embedding rows are never looked at by the tokenizer; keep them small.
_HIDDEN_SIZE = 4


def exllamav2_tokenizer(model_dir: Path) -> Any:
    """exllamav2's tokenizer for `model_dir`, configured as `ExLlamaV2Config.prepare` would."""
    config = ExLlamaV2Config()
    config.model_dir = str(model_dir)
    config_path = model_dir / "config.json"
    read_config = json.loads(config_path.read_text()) if config_path.exists() else {}
    # The same reads as ExLlamaV2Config.prepare, which also needs weights and so can't run here.
    config.bos_token_id = read(read_config, int, "bos_token_id", None)
    config.eos_token_id = read(read_config, [int, list], "eos_token_id", None)
    config.pad_token_id = read(read_config, int, "pad_token_id", None)
    config.vocab_size = read(read_config, int, "vocab_size", None, opt_subkey="text_config")
    if isinstance(config.eos_token_id, list):
        config.eos_token_id = config.eos_token_id[0]
    return ExLlamaV2Tokenizer(config)


def exllamav2_embeddings(spans: Sequence[Span]) -> list[Any]:
    """One embedding per distinct span, placed at the span's range, longest alias first.

    exllamav2 matches aliases in list order; longest first is the order vlmq resolves them in.
    """
    model: Any = types.SimpleNamespace(config=types.SimpleNamespace(hidden_size=_HIDDEN_SIZE))
    embeddings = []
    for span in sorted(set(spans), key=lambda s: (-len(s.alias), s.alias)):
        embedding = ExLlamaV2MMEmbedding(
            model=model,
            embeddings=torch.zeros(span.token_range.length, _HIDDEN_SIZE),
            text_alias=span.alias,
            pre_tokens=len(span.pre_token_ids),
            post_tokens=len(span.post_token_ids),
        )
        # The real engine places embeddings at the allocator's ranges in the same way.
        embedding.first_index = span.token_range.first
        embeddings.append(embedding)
    return embeddings


def exllamav2_encode(
    tokenizer: Any, prompt: str, spans: Sequence[Span], add_bos: bool
) -> list[int]:
    ids = tokenizer.encode(
        prompt,
        add_bos=add_bos,
        encode_special_tokens=True,
        embeddings=exllamav2_embeddings(spans),
    )
    return list(ids.tolist()[0])
