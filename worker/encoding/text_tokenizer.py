"""The text tokenizer the prompt encoder sees, and its implementation over HF `tokenizers`.

The GPU engine is exllamav2, which decides from a model's files which strings are special tokens
and which ID is BOS. A prompt encoded anywhere in vlmq must come out exactly as exllamav2 would
encode it, so `HFTextTokenizer.from_model_dir` repeats that decision step by step (exllamav2
0.3.2: `ExLlamaV2Tokenizer.__init__`, and `ExLlamaV2Config.prepare` for config.json).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol

from tokenizers import Tokenizer


class TextTokenizer(Protocol):
    """What prompt encoding needs from a tokenizer."""

    @property
    def bos_token_id(self) -> int | None:
        """The ID put before a prompt when BOS is asked for; None where the model has none."""

    @property
    def adds_bos(self) -> bool:
        """Whether the model's own Hugging Face tokenizer puts BOS before a text it encodes.

        What a prompt gets when its request leaves BOS to the model: the reference processor's
        choice, which `bos_token_id` (exllamav2's reading of config.json) does not decide.
        """

    @property
    def special_pieces(self) -> Mapping[str, int]:
        """Non-empty special-token strings and their IDs, in the order exllamav2 matches them.

        The order matters: where two pieces match at the same place, the earlier one wins.
        """

    def encode_texts(self, texts: Sequence[str]) -> list[list[int]]:
        """The IDs of each plain text: no special-token splitting, no BOS."""

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids`, with special tokens written out as their pieces."""


@dataclass(frozen=True, slots=True)
class HFTextTokenizer:
    """A `TextTokenizer` over a Hugging Face tokenizer.json, with exllamav2's special tokens."""

    # Never pads nor truncates: with either, one text's IDs would depend on the batch around it.
    backend: Tokenizer = field(repr=False)
    bos_token_id: int | None
    special_pieces: Mapping[str, int] = field(repr=False)  # read-only; Mistral has 1000
    adds_bos: bool = False

    def __post_init__(self) -> None:
        if self.backend.padding is not None or self.backend.truncation is not None:
            raise ValueError(
                "the tokenizer pads or truncates; prompt pieces must be encoded without either"
            )

    @classmethod
    def from_model_dir(cls, model_dir: Path | str) -> HFTextTokenizer:
        files = _ModelFiles.read(Path(model_dir))
        backend = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
        # A tokenizer.json may ask for padding (to the batch's longest) or truncation; neither
        # belongs in a prompt, whatever the file says.
        backend.no_padding()
        backend.no_truncation()
        special_pieces, bos_token_id = _exllamav2_special_pieces(files, backend)
        return cls(
            backend,
            bos_token_id,
            MappingProxyType(special_pieces),
            adds_bos=_hf_adds_bos(backend, bos_token_id),
        )

    def encode_texts(self, texts: Sequence[str]) -> list[list[int]]:
        # What exllamav2's ExLlamaV2TokenizerHF.encode does per text, in one call for all texts;
        # the fast variant only skips computing character offsets, which nobody reads.
        if not texts:
            return []
        encodings = self.backend.encode_batch_fast(list(texts), add_special_tokens=False)
        return [encoding.ids for encoding in encodings]

    def decode(self, ids: Sequence[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=False)


@dataclass(frozen=True, slots=True)
class _ModelFiles:
    """The JSON files exllamav2 reads to find special tokens; absent files are None."""

    tokenizer: dict[str, Any]
    tokenizer_config: dict[str, Any] | None
    added_tokens: dict[str, int] | None
    config: dict[str, Any] | None

    @classmethod
    def read(cls, model_dir: Path) -> _ModelFiles:
        tokenizer = _read_json(model_dir / "tokenizer.json")
        if tokenizer is None:
            raise FileNotFoundError(f"no tokenizer.json in {model_dir}")
        return cls(
            tokenizer=tokenizer,
            tokenizer_config=_read_json(model_dir / "tokenizer_config.json"),
            added_tokens=_read_json(model_dir / "added_tokens.json"),
            config=_read_json(model_dir / "config.json"),
        )


def _exllamav2_special_pieces(
    files: _ModelFiles, backend: Tokenizer
) -> tuple[dict[str, int], int | None]:
    """Special pieces in exllamav2's order (its `extended_piece_to_id`) and the BOS ID."""
    # Declared specials, later sources overriding the ID but keeping the first position:
    # tokenizer.json's special added tokens, all of added_tokens.json (exllamav2 takes every
    # entry there as special), then tokenizer_config.json's special added_tokens_decoder.
    pieces: dict[str, int | None] = {}
    for token in files.tokenizer.get("added_tokens") or []:
        if token["special"]:
            pieces[token["content"]] = token["id"]
    pieces.update(files.added_tokens or {})
    tokenizer_config = files.tokenizer_config or {}
    for key, token in tokenizer_config.get("added_tokens_decoder", {}).items():
        if token["special"]:
            pieces[token["content"]] = int(key)
    declared_piece_of = {token_id: piece for piece, token_id in pieces.items()}

    config = files.config or {}
    unk_piece: str | None = getattr(backend.model, "unk_token", None)
    unk_id = None if unk_piece is None else backend.token_to_id(unk_piece)
    bos_id = _named_token_id(files, backend, "bos_token", _config_id(config, "bos_token_id"), 1)
    eos_id = _named_token_id(files, backend, "eos_token", _config_eos_id(config), 2)
    pad_id = _named_token_id(files, backend, "pad_token", _config_id(config, "pad_token_id"), None)

    def piece_of(token_id: int | None) -> str:
        if token_id is None or token_id < 0:
            return ""
        return declared_piece_of.get(token_id) or backend.id_to_token(token_id) or ""

    unk_piece = unk_piece or piece_of(unk_id)
    bos_piece = piece_of(bos_id)
    eos_piece = piece_of(eos_id)
    if pad_id is None:
        pad_id = backend.token_to_id("<pad>") or (eos_id if eos_id != bos_id else -1)
    if unk_id == pad_id:
        # exllamav2 then renames UNK to its pad string, which is never set and stays empty,
        # so the UNK piece is not added below.
        unk_piece = ""

    # The control pieces come last, unless they were declared already (then only the ID changes).
    for piece, token_id in ((unk_piece, unk_id), (bos_piece, bos_id), (eos_piece, eos_id)):
        if piece:
            pieces[piece] = token_id
    # exllamav2 fails on an UNK piece missing from the vocabulary (it would put None into the
    # prompt) and on an empty piece (its regex then matches everywhere); both are left out.
    return {p: i for p, i in pieces.items() if p and i is not None}, bos_id


def _hf_adds_bos(backend: Tokenizer, bos_token_id: int | None) -> bool:
    """Whether transformers' tokenizer for these files starts an encoded text with BOS.

    transformers 5 encodes with tokenizer.json's post-processor as written (a
    `TemplateProcessing` that opens with BOS, for one); tokenizer_config.json's `add_bos_token`
    does not change it (seen with 5.24). So the post-processor is asked, on a probe text.
    """
    if bos_token_id is None:
        return False
    probe = "a"
    with_special = backend.encode(probe, add_special_tokens=True).ids
    plain = backend.encode(probe, add_special_tokens=False).ids
    return with_special[:1] == [bos_token_id] and plain[:1] != [bos_token_id]


def _named_token_id(
    files: _ModelFiles, backend: Tokenizer, key: str, from_config: int | None, default: int | None
) -> int | None:
    """config.json's ID if it has one, else the token tokenizer_config.json names, else default."""
    if from_config is not None:
        return from_config
    if files.tokenizer_config is None or key not in files.tokenizer_config:
        return default
    named = files.tokenizer_config[key]
    if isinstance(named, dict):
        named = named.get("content")
    # An explicit null (Qwen's "bos_token": null) means the model has no such token.
    return backend.token_to_id(named) if isinstance(named, str) else None


def _config_id(config: Mapping[str, Any], key: str) -> int | None:
    value = config.get(key)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if value is not None and not isinstance(value, int):
        raise ValueError(f"config.json: {key} must be an integer, got {value!r}")
    return value


def _config_eos_id(config: Mapping[str, Any]) -> int | None:
    value = config.get("eos_token_id")
    if isinstance(value, list) and value:
        # Several stop tokens; exllamav2's tokenizer knows only the first as EOS.
        value = value[0]
    if value is not None and not isinstance(value, int):
        raise ValueError(f"config.json: eos_token_id must be an integer or a list, got {value!r}")
    return value


def _read_json(path: Path) -> Any:
    if not path.exists():
        return None
    with path.open(encoding="utf-8") as file:
        return json.load(file)
