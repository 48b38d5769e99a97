"""A model's chat template, rendered exactly as transformers 5 renders it, without transformers.

Chat messages become a prompt through the model's own Jinja template, in the environment
transformers renders it in (`jinja_environment`), with `messages`, `tools`, `documents`,
`add_generation_prompt` and the tokenizer's named special tokens (`bos_token`, `eos_token`,
...). So a submitter renders prompts with no model library loaded, from a `ChatTemplate` the
serving side read from the model directory and published (`to_json`).

A rendered prompt becomes a vlmq prompt (`prompt_for`): each image the template wrote (its
`image_marker`) becomes vlmq's `<image>` placeholder, and a leading BOS the template wrote is
dropped where the model's tokenizer adds BOS itself (the prompt encoder adds it then, so it
would be doubled). A template without BOS whose tokenizer adds one gets one from the encoder
that transformers' `apply_chat_template(tokenize=True)` would not put there; no template of a
family vlmq serves is like that.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jinja2

from orchestrator.batches.jinja_environment import compiled, template_messages
from orchestrator.job_limits import IMAGE_PLACEHOLDER
from worker.errors import VlmqError

JSON_VERSION = 1
JSON_FIELDS = ("version", "source", "special_tokens", "image_marker", "adds_bos")
# Real templates are a few KiB (the largest, with tool use, about 20); anything near this is
# not a chat template.
MAX_TEMPLATE_CHARS = 1 << 20

# What each template writes for one image part, by config.json's model_type. Pixtral's
# processor expands "[IMG]" to the image's rows; Qwen2-VL's expands the pad between the two
# vision tokens. Either way the whole marker is where vlmq's span (rows and special tokens) goes.
IMAGE_MARKERS: Mapping[str, str] = MappingProxyType(
    {"llava": "[IMG]", "qwen2_vl": "<|vision_start|><|image_pad|><|vision_end|>"}
)

# transformers' SPECIAL_TOKENS_ATTRIBUTES: the named tokens every tokenizer may have.
_NAMED_TOKENS = (
    "bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token",
)
_TOKEN_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*_token")


class ChatTemplateError(VlmqError):
    """A model has no usable chat template, or its template refused a conversation."""


@dataclass(frozen=True, slots=True)
class ChatTemplate:
    """One model's chat template and what rendering with it needs; built checked."""

    source: str  # the Jinja text
    # The tokenizer's named special tokens as transformers passes them to the template:
    # name -> text, e.g. "bos_token" -> "<s>". Read-only.
    special_tokens: Mapping[str, str]
    image_marker: str  # what the template writes for one image part
    adds_bos: bool  # the model's own tokenizer puts BOS before what it encodes

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source:
            raise ChatTemplateError("a chat template's source must be a non-empty str")
        if len(self.source) > MAX_TEMPLATE_CHARS:
            raise ChatTemplateError(
                f"a chat template of {len(self.source):,} characters is over the limit of "
                f"{MAX_TEMPLATE_CHARS:,}"
            )
        if not isinstance(self.special_tokens, Mapping) or not all(
            isinstance(k, str) and _TOKEN_NAME.fullmatch(k) and isinstance(v, str)
            for k, v in self.special_tokens.items()
        ):
            # Names only of the form transformers gives them: one named "messages" would
            # collide with the conversation itself.
            raise ChatTemplateError(
                "special_tokens must map names ending in _token to str tokens"
            )
        # A read-only copy: the caller's dict may change after it was checked.
        object.__setattr__(
            self, "special_tokens", MappingProxyType(dict(sorted(self.special_tokens.items())))
        )
        if not isinstance(self.image_marker, str) or not self.image_marker:
            raise ChatTemplateError("image_marker must be a non-empty str")
        if not isinstance(self.adds_bos, bool):
            raise ChatTemplateError(f"adds_bos must be a bool, got {type(self.adds_bos).__name__}")
        try:
            compiled(self.source)  # a syntax error is refused here, not on the first line
        except jinja2.TemplateSyntaxError as error:
            raise ChatTemplateError(
                f"the chat template is not valid Jinja (line {error.lineno}): {error.message}"
            ) from None

    @property
    def bos_token(self) -> str | None:
        return self.special_tokens.get("bos_token")

    @property
    def eos_token(self) -> str | None:
        return self.special_tokens.get("eos_token")

    @classmethod
    def from_model_dir(cls, path: Path | str) -> ChatTemplate:
        """The template where transformers finds it, in this order: processor_config.json's
        "chat_template", chat_template.json, chat_template.jinja (the processor's files, which
        a VLM's processor renders with), then tokenizer_config.json's "chat_template" (the
        tokenizer's); a file with named templates gives its "default" one."""
        directory = Path(path)
        config = _read_json(directory / "config.json")
        if config is None:
            raise ChatTemplateError(f"{directory} has no config.json to tell its model family")
        image_marker = _image_marker(config, directory)
        tokenizer_config = _read_json(directory / "tokenizer_config.json")
        source = _find_template(directory, tokenizer_config)
        special_tokens = _special_tokens(
            tokenizer_config, _read_json(directory / "special_tokens_map.json")
        )
        return cls(source, special_tokens, image_marker, _adds_bos(directory))

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": JSON_VERSION,
                "source": self.source,
                "special_tokens": dict(self.special_tokens),
                "image_marker": self.image_marker,
                "adds_bos": self.adds_bos,
            },
            ensure_ascii=False,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> ChatTemplate:
        """What `to_json` wrote; anything else (unknown or missing keys, other types, another
        version) raises ChatTemplateError."""
        try:
            fields = json.loads(text)
        except (ValueError, RecursionError) as error:
            raise ChatTemplateError(f"a published chat template is not JSON: {error}") from None
        if not isinstance(fields, dict):
            raise ChatTemplateError("a published chat template must be a JSON object")
        unknown = sorted(set(fields) - set(JSON_FIELDS))
        missing = [name for name in JSON_FIELDS if name not in fields]
        if unknown or missing:
            raise ChatTemplateError(
                f"a published chat template has unknown keys {unknown} and lacks {missing} "
                f"(expected exactly {list(JSON_FIELDS)})"
            )
        version = fields["version"]
        if type(version) is not int or version != JSON_VERSION:
            raise ChatTemplateError(
                f"chat template JSON version {version!r} is not supported (this vlmq reads "
                f"{JSON_VERSION})"
            )
        if not isinstance(fields["special_tokens"], dict):
            raise ChatTemplateError("special_tokens must be a JSON object")
        return cls(
            fields["source"], fields["special_tokens"], fields["image_marker"], fields["adds_bos"]
        )

    def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True
               ) -> str:
        """The conversation as transformers' `apply_chat_template(messages, tokenize=False)`
        writes it; a template that refuses it (`raise_exception`) raises ChatTemplateError
        with the template's message."""
        try:
            chat = template_messages(messages)
        except ValueError as error:
            raise ChatTemplateError(str(error)) from None
        try:
            return compiled(self.source).render(
                messages=chat,
                tools=None,
                documents=None,
                add_generation_prompt=add_generation_prompt,
                **self.special_tokens,
            )
        except Exception as error:  # whatever the template does, it is this conversation's fault
            detail = str(error) or type(error).__name__
            raise ChatTemplateError(f"the chat template refused the messages: {detail}") from None

    def prompt_for(self, messages: Sequence[Mapping[str, Any]]) -> str:
        """The vlmq prompt of a conversation whose image parts are `{"type": "image"}`: rendered
        for the assistant's answer, one `<image>` per image part, in order."""
        num_images = _count_image_parts(messages)
        rendered = self.render(messages, add_generation_prompt=True)
        num_markers = rendered.count(self.image_marker)
        if num_markers != num_images:
            raise ChatTemplateError(
                f"the rendered prompt holds {num_markers} image markers "
                f"({self.image_marker!r}) for {num_images} image parts; the text may not "
                f"contain the marker itself"
            )
        prompt = rendered.replace(self.image_marker, IMAGE_PLACEHOLDER)
        if prompt.count(IMAGE_PLACEHOLDER) != num_images:
            raise ChatTemplateError(
                f"the messages' text contains {IMAGE_PLACEHOLDER!r}, which vlmq reserves for "
                f"the place of an image"
            )
        bos = self.bos_token
        if self.adds_bos and bos and prompt.startswith(bos):
            prompt = prompt[len(bos) :]
        return prompt


def _count_image_parts(messages: Sequence[Mapping[str, Any]]) -> int:
    def parts() -> Iterator[object]:
        for message in messages:
            content = message.get("content") if isinstance(message, Mapping) else None
            if isinstance(content, list | tuple):
                yield from content

    return sum(1 for part in parts() if isinstance(part, Mapping) and part.get("type") == "image")


# --- reading a model directory --------------------------------------------------------------


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ChatTemplateError(f"cannot read {path}: {error}") from None


def _image_marker(config: Any, directory: Path) -> str:
    model_type = config.get("model_type") if isinstance(config, dict) else None
    marker = IMAGE_MARKERS.get(model_type) if isinstance(model_type, str) else None
    vision = config.get("vision_config") if isinstance(config, dict) else None
    vision_type = vision.get("model_type") if isinstance(vision, dict) else None
    # Llava with another tower (CLIP's llava-1.5) writes "<image>"; vlmq serves Pixtral's only.
    if marker is None or (model_type == "llava" and vision_type not in (None, "pixtral")):
        raise ChatTemplateError(
            f"{directory}: model_type {model_type!r} with vision model {vision_type!r} has no "
            f"known image marker (vlmq knows {', '.join(IMAGE_MARKERS)})"
        )
    return marker


def _find_template(directory: Path, tokenizer_config: Any) -> str:
    processor_config = _read_json(directory / "processor_config.json")
    legacy = _read_json(directory / "chat_template.json")
    jinja_path = directory / "chat_template.jinja"
    candidates: list[tuple[str, Callable[[], Any]]] = [
        ("processor_config.json", lambda: _key(processor_config, "chat_template")),
        ("chat_template.json", lambda: _key(legacy, "chat_template")),
        ("chat_template.jinja", lambda: _read_text(jinja_path)),
        ("tokenizer_config.json", lambda: _key(tokenizer_config, "chat_template")),
    ]
    for where, read in candidates:
        found = read()
        if found is not None:
            return _default_template(found, directory / where)
    raise ChatTemplateError(
        f"{directory} has no chat template (looked in {', '.join(w for w, _ in candidates)}); "
        f"send raw prompts to the /vlmq/v1/generate endpoint instead"
    )


def _key(content: Any, key: str) -> Any:
    return content.get(key) if isinstance(content, dict) else None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8") if path.is_file() else None
    except (OSError, ValueError) as error:
        raise ChatTemplateError(f"cannot read {path}: {error}") from None


def _default_template(found: Any, where: Path) -> str:
    """The one template of `found`: a str, or the "default" of named templates (a dict, or
    tokenizer_config.json's list of {"name", "template"})."""
    named = found
    if isinstance(found, list):
        named = {
            item.get("name"): item.get("template") for item in found if isinstance(item, dict)
        }
    if isinstance(named, dict):
        if "default" not in named:
            raise ChatTemplateError(
                f"{where} has named chat templates {sorted(map(str, named))} but no 'default'"
            )
        found = named["default"]
    if not isinstance(found, str) or not found:
        raise ChatTemplateError(f"{where}: the chat template must be a non-empty string")
    return found


def _special_tokens(tokenizer_config: Any, special_tokens_map: Any) -> dict[str, str]:
    """The named special tokens transformers 5 passes to a template (`special_tokens_map`):
    the standard names, and any other `*_token` of tokenizer_config.json (a model's own, such
    as an image token) and its `extra_special_tokens` when those are named. special_tokens_map.json
    counts only where tokenizer_config.json lacks `added_tokens_decoder`, and then wins."""
    config = tokenizer_config if isinstance(tokenizer_config, dict) else {}
    found: dict[str, str] = {}
    for key, value in config.items():
        if key in _NAMED_TOKENS:
            text = _token_text(value)
        elif key.endswith("_token"):
            # Read before transformers turns {"__type": "AddedToken"} dicts into tokens, so
            # only a str counts for these.
            text = value if isinstance(value, str) else None
        else:
            continue
        if text is not None:
            found[key] = text
    extra = config.get("extra_special_tokens") or config.get("additional_special_tokens")
    if isinstance(extra, dict):
        found.update({k: t for k, v in extra.items() if (t := _token_text(v)) is not None})
    if "added_tokens_decoder" not in config and isinstance(special_tokens_map, dict):
        for key, value in special_tokens_map.items():
            text = _token_text(value)
            if (key in _NAMED_TOKENS or key.endswith("_token")) and text is not None:
                found[key] = text
    return found


def _token_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def _adds_bos(directory: Path) -> bool:
    # The prompt encoder's own rule, so the BOS dropped here is exactly the one it adds.
    from worker.encoding.text_tokenizer import HFTextTokenizer

    try:
        return HFTextTokenizer.from_model_dir(directory).adds_bos
    except (OSError, ValueError) as error:
        raise ChatTemplateError(f"cannot read the tokenizer of {directory}: {error}") from None

