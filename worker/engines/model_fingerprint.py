"""A model directory's fingerprint: a hash of every file that decides its embeddings and outputs.

Image keys include it (`orchestrator/pipeline/image_key.py`), so features computed by one model
are never taken for another's. It covers the weights, the configs that shape the architecture
and the image preprocessing, and the tokenizer files (they fix the IDs of the special tokens placed
around each image and which IDs end generation). Chat templates, READMEs and the like are left
out: they change neither. A file the engines would read if present counts even when absent, so
adding one changes the fingerprint.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

# Files read by exllamav2 or transformers that change what the model computes or emits.
_CONFIG_FILES = (
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)
_WEIGHT_PATTERN = "*.safetensors"
# Raised when the recipe changes, so fingerprints from different recipes never meet.
_FINGERPRINT_VERSION = b"vlmq-model-fingerprint-1"


def model_fingerprint(model_dir: Path) -> str:
    """Hex BLAKE2b-256 over the names and contents of the model's files, streamed."""
    weights = sorted(model_dir.glob(_WEIGHT_PATTERN))
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} has no config.json, so it is not a model directory")
    if not weights:
        raise FileNotFoundError(f"{model_dir} has no {_WEIGHT_PATTERN} weights")
    combined = hashlib.blake2b(_FINGERPRINT_VERSION, digest_size=32)
    for path in [model_dir / name for name in _CONFIG_FILES] + weights:
        # Length-prefixed name, then a presence byte and the file's own digest: no two
        # different sets of files can produce the same stream.
        name = path.name.encode()
        combined.update(len(name).to_bytes(4, "big") + name)
        combined.update(b"\x01" + _file_digest(path) if path.is_file() else b"\x00")
    return combined.hexdigest()


def _file_digest(path: Path) -> bytes:
    # Streams in chunks: weights may be many GB.
    with path.open("rb") as file:
        return hashlib.file_digest(file, lambda: hashlib.blake2b(digest_size=32)).digest()
