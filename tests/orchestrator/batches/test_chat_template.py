"""ChatTemplate renders as transformers renders, and its prompts encode to transformers' IDs.

The references are transformers' own: the tokenizer's `apply_chat_template` for the text, and
the family's processor (placeholder expansion and tokenizer, `add_special_tokens=False` as
`apply_chat_template(tokenize=True)` calls it) for the token IDs. Nothing on the reference
side uses vlmq's template, encoder or layouts.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
import pytest
from PIL import Image

from orchestrator.batches.chat_template import ChatTemplate, ChatTemplateError
from tests.support.hf_processors import hf_processor
from tests.support.tiny_model_dirs import edit_json, write_json
from tests.support.transformers_fixtures import pattern_image
from worker.encoding.prompt_encoder import PromptEncoder
from worker.encoding.text_tokenizer import HFTextTokenizer
from worker.images.visual_tokens import visual_layout
from worker.images.vlm_family import detect_family, read_image_params
from worker.span import Span
from worker.tiny.chat_templates import chat_template
from worker.tiny.model import TINY_MODEL_FAMILIES, TinyModelFamily, write_tiny_model
from worker.token_range import RESERVED_ID_BASE, TokenRange

IMAGE = {"type": "image"}


def text(value: str) -> dict[str, str]:
    return {"type": "text", "text": value}


# Each valid for both families (Pixtral's template wants user/assistant turns alternating).
CONVERSATIONS: dict[str, list[dict[str, Any]]] = {
    "system and user": [
        {"role": "system", "content": "You caption photographs."},
        {"role": "user", "content": [IMAGE, text("Describe this picture.")]},
    ],
    "multi-turn": [
        {"role": "user", "content": [text("What is in "), IMAGE, text("?")]},
        {"role": "assistant", "content": "A red bicycle."},
        {"role": "user", "content": [text("And here: "), IMAGE, text(" — same colour?")]},
    ],
    "several images": [
        {"role": "user", "content": [IMAGE, text(" vs "), IMAGE, IMAGE, text("Which differs?")]},
    ],
    "string content": [{"role": "user", "content": "Hello there, 今日は 😀"}],
    "text parts only": [{"role": "user", "content": [text("first"), text(" second")]}],
}
WITH_IMAGES = ("system and user", "multi-turn", "several images")


@pytest.fixture(scope="module", params=TINY_MODEL_FAMILIES)
def family(request: pytest.FixtureRequest) -> TinyModelFamily:
    family: TinyModelFamily = request.param
    return family


@pytest.fixture(scope="module")
def model_dir(family: TinyModelFamily, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp(f"chat-{family}")
    write_tiny_model(directory, family)
    return directory


def hf_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_render_is_transformers_apply_chat_template(
    model_dir: Path, family: TinyModelFamily, add_generation_prompt: bool
) -> None:
    template = ChatTemplate.from_model_dir(model_dir)
    assert template.source == chat_template(family)  # found in the processor's file
    tokenizer = hf_tokenizer(model_dir)
    for name, messages in CONVERSATIONS.items():
        expected = tokenizer.apply_chat_template(
            messages, chat_template=template.source, tokenize=False,
            add_generation_prompt=add_generation_prompt,
        )
        assert template.render(messages, add_generation_prompt) == expected, name


# Every part of transformers' environment: block trimming, loop controls, its tojson (no HTML
# escaping), its generation tag, namespace and dict, the variables it passes, None-valued keys
# dropped and reasoning copied to its aliases.
ENVIRONMENT_PROBE = """\
{% for m in messages %}
    {% if loop.index0 > 2 %}{% break %}{% endif %}
  <{{ m.role }}>{{ m.content | tojson }} {{ m | tojson(sort_keys=true) }}
{% generation %}[{{ m.content }}]{% endgeneration %}
    {% set ns = namespace(n=loop.index) %}{% set ns.n = ns.n * 10 %}{{ ns.n }}
{% endfor %}
{{ dict(a=1, b="é<&>") | tojson }} {{ dict.fromkeys(["k"]) | tojson }}
{{ bos_token }}|{{ eos_token }}|{{ pad_token }}|{{ tools }}|{{ documents }}
{{ add_generation_prompt }}
{{ messages | length }} {{ "name" in messages[0] }}
"""
PROBE_MESSAGES: list[dict[str, Any]] = [
    {"role": "user", "content": "é <b>&</b>", "name": None},
    {"role": "assistant", "content": "ok", "reasoning": "thought"},
    {"role": "user", "content": [text("x"), IMAGE]},
    {"role": "assistant", "content": "never shown"},
]


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_the_environment_is_transformers_own(model_dir: Path, add_generation_prompt: bool
                                             ) -> None:
    template = ChatTemplate(
        ENVIRONMENT_PROBE, ChatTemplate.from_model_dir(model_dir).special_tokens, "[IMG]", False
    )
    expected = hf_tokenizer(model_dir).apply_chat_template(
        PROBE_MESSAGES, chat_template=ENVIRONMENT_PROBE, tokenize=False,
        add_generation_prompt=add_generation_prompt,
    )
    assert template.render(PROBE_MESSAGES, add_generation_prompt) == expected
    escape = "{% set ns = namespace(_private=1) %}"
    with pytest.raises(ChatTemplateError, match="underscore"):
        ChatTemplate(escape, {}, "[IMG]", False).render(PROBE_MESSAGES)


def test_the_special_tokens_are_the_ones_transformers_passes(model_dir: Path) -> None:
    assert dict(ChatTemplate.from_model_dir(model_dir).special_tokens) == (
        hf_tokenizer(model_dir).special_tokens_map
    )


SPECIAL_TOKEN_EDITS = {
    # A model's own named token (a str) and named extras count; a list of extras does not.
    "model token": lambda c: c | {"image_token": "[IMG]",
                                  "extra_special_tokens": {"x_token": "<s>"}},
    "extra list": lambda c: c | {"extra_special_tokens": ["<pad>"]},
    "bos as AddedToken": lambda c: c | {"bos_token": {"__type": "AddedToken", "content": "</s>",
                                                      "lstrip": False, "rstrip": False,
                                                      "normalized": False, "single_word": False,
                                                      "special": True}},
    "no bos": lambda c: c | {"bos_token": None},
}


@pytest.mark.parametrize("edit", SPECIAL_TOKEN_EDITS)
def test_special_tokens_follow_transformers_reading_of_tokenizer_config(
    model_dir: Path, tmp_path: Path, edit: str
) -> None:
    directory = shutil.copytree(model_dir, tmp_path / "model")
    edit_json(directory / "tokenizer_config.json", SPECIAL_TOKEN_EDITS[edit])
    ours = dict(ChatTemplate.from_model_dir(directory).special_tokens)
    assert ours == hf_tokenizer(directory).special_tokens_map


def test_legacy_special_tokens_map_wins_without_added_tokens_decoder(
    model_dir: Path, tmp_path: Path
) -> None:
    directory = shutil.copytree(model_dir, tmp_path / "model")
    edit_json(directory / "tokenizer_config.json",
              lambda c: {k: v for k, v in c.items() if k != "added_tokens_decoder"}
              | {"eos_token": "<pad>"})
    edit_json(directory / "special_tokens_map.json",
              lambda m: m | {"eos_token": {"content": "<|endoftext|>", "lstrip": False}})
    ours = dict(ChatTemplate.from_model_dir(directory).special_tokens)
    assert ours["eos_token"] == "<|endoftext|>"
    assert ours == hf_tokenizer(directory).special_tokens_map


# --- token IDs ------------------------------------------------------------------------------


def _bos_template(model_dir: Path) -> None:
    """tokenizer.json's post-processor opens every text with BOS, as Llama's and the real
    Pixtral's do: transformers' tokenizer then adds BOS itself."""
    backend = HFTextTokenizer.from_model_dir(model_dir).backend
    piece = "<s>" if backend.token_to_id("<s>") is not None else "<|endoftext|>"
    bos = {"SpecialToken": {"id": piece, "type_id": 0}}
    sequence = {"Sequence": {"id": "A", "type_id": 0}}
    template = {
        "type": "TemplateProcessing",
        "single": [bos, sequence],
        "pair": [bos, sequence, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {piece: {"id": piece, "ids": [backend.token_to_id(piece)],
                                   "tokens": [piece]}},
    }
    edit_json(model_dir / "tokenizer.json", lambda tok: tok | {"post_processor": template})
    edit_json(model_dir / "tokenizer_config.json", lambda c: c | {"bos_token": piece})


def vlmq_ids(model_dir: Path, prompt: str, images: Sequence[Image.Image]) -> list[int]:
    """The IDs vlmq's generator builds for `prompt` (one <image> per image), each image row
    written as the image token and each special row as its own token, as transformers
    writes them."""
    tokenizer = HFTextTokenizer.from_model_dir(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    params = read_image_params(model_dir, detect_family(config))
    image_token = "[IMG]" if config["model_type"] == "llava" else "<|image_pad|>"
    spans, rows, first = [], {}, RESERVED_ID_BASE
    pieces = prompt.split("<image>")
    assert len(pieces) == len(images) + 1
    aliased = pieces[0]
    for index, (image, piece) in enumerate(zip(images, pieces[1:], strict=True)):
        layout = visual_layout(image.width, image.height, params).span_layout(
            tokenizer.special_pieces
        )
        span = Span(f"<$EMB_{index}$>", TokenRange(0, first, layout.num_rows), layout)
        spans.append(span)
        text_rows = dict(layout.text_rows)
        for offset in range(layout.num_rows):
            rows[first + offset] = text_rows.get(offset, tokenizer.special_pieces[image_token])
        aliased += span.alias + piece
        first += layout.num_rows
    ids = PromptEncoder(tokenizer).encode(aliased, spans)
    return [rows.get(token, token) for token in ids]


def hf_ids(model_dir: Path, family: TinyModelFamily, rendered: str,
           images: Sequence[Image.Image]) -> list[int]:
    processor = hf_processor(model_dir, family)
    if not images:
        return list(processor.tokenizer(rendered, add_special_tokens=False).input_ids)
    out = processor(text=[rendered], images=list(images), add_special_tokens=False)
    return [int(token) for token in out["input_ids"][0]]


def prepared(model_dir: Path, image: Image.Image) -> Image.Image:
    """The image at the size vlmq's layout gives it, as the transformers engine hands it to
    the processor (Pixtral's processor rounds otherwise; see visual_tokens)."""
    config = json.loads((model_dir / "config.json").read_text())
    params = read_image_params(model_dir, detect_family(config))
    layout = visual_layout(image.width, image.height, params)
    return image.resize((layout.resized_width, layout.resized_height))


@pytest.mark.parametrize("bos", ["as written", "tokenizer adds bos"])
def test_prompt_ids_are_transformers_own(
    model_dir: Path, family: TinyModelFamily, tmp_path: Path, bos: str
) -> None:
    directory = model_dir
    if bos == "tokenizer adds bos":
        directory = shutil.copytree(model_dir, tmp_path / "model")
        _bos_template(directory)
    template = ChatTemplate.from_model_dir(directory)
    assert template.adds_bos == (bos == "tokenizer adds bos")
    sizes = [(70, 45), (40, 90), (64, 64)]
    for name in (*WITH_IMAGES, "string content"):
        messages = CONVERSATIONS[name]
        count = sum(part == IMAGE for m in messages for part in m["content"]
                    if isinstance(m["content"], list))
        images = [prepared(directory, pattern_image(*sizes[i % 3], seed=i + 2))
                  for i in range(count)]
        prompt = template.prompt_for(messages)
        assert prompt.count("<image>") == count
        ours = vlmq_ids(directory, prompt, images)
        theirs = hf_ids(directory, family, template.render(messages), images)
        bos_id = HFTextTokenizer.from_model_dir(directory).bos_token_id
        assert bos_id is not None
        if template.adds_bos and "bos_token" not in template.source:
            # The one known difference (see chat_template's docstring): a template that
            # writes no BOS (Qwen2-VL's), for a tokenizer that adds one, gets it from vlmq's
            # encoder, where apply_chat_template(tokenize=True) has none.
            assert ours == [bos_id, *theirs], name
            continue
        assert ours == theirs, name
        if template.bos_token is not None:
            assert ours.count(bos_id) == 1 and ours[0] == bos_id, name


def test_a_template_that_raises_gives_its_message(model_dir: Path, family: TinyModelFamily
                                                  ) -> None:
    template = ChatTemplate.from_model_dir(model_dir)
    twice = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    if family == "pixtral":
        message = "conversation roles must alternate user/assistant/user/assistant"
        with pytest.raises(jinja2.TemplateError, match=message):
            hf_tokenizer(model_dir).apply_chat_template(
                twice, chat_template=template.source, tokenize=False
            )
        with pytest.raises(ChatTemplateError, match=message):
            template.prompt_for(twice)
    else:
        assert template.render(twice).count("<|im_start|>user") == 2  # Qwen takes any order
    with pytest.raises(ChatTemplateError, match="at least one message"):
        template.render([])


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([{"role": "user", "content": [IMAGE, text("[IMG]<|vision_start|><|image_pad|>"
                                                   "<|vision_end|>")]}], "image markers"),
        ([{"role": "user", "content": [text("a literal <image> here")]}], "reserves"),
    ],
)
def test_markers_and_placeholders_in_text_are_refused(
    model_dir: Path, messages: list[dict[str, Any]], match: str
) -> None:
    with pytest.raises(ChatTemplateError, match=match):
        ChatTemplate.from_model_dir(model_dir).prompt_for(messages)


# --- where the template comes from ----------------------------------------------------------


def _without_templates(model_dir: Path, tmp_path: Path) -> Path:
    directory = shutil.copytree(model_dir, tmp_path / "model")
    (directory / "chat_template.json").unlink()
    (directory / "processor_config.json").unlink(missing_ok=True)
    return directory


def test_template_files_are_taken_in_transformers_order(model_dir: Path, tmp_path: Path) -> None:
    directory = _without_templates(model_dir, tmp_path)
    with pytest.raises(ChatTemplateError, match="no chat template"):
        ChatTemplate.from_model_dir(directory)
    edit_json(directory / "tokenizer_config.json", lambda c: c | {"chat_template": "T{{ 1 }}"})
    assert ChatTemplate.from_model_dir(directory).source == "T{{ 1 }}"
    assert hf_tokenizer(directory).chat_template == "T{{ 1 }}"
    (directory / "chat_template.jinja").write_text("J{{ 2 }}", encoding="utf-8")
    assert ChatTemplate.from_model_dir(directory).source == "J{{ 2 }}"
    assert hf_tokenizer(directory).chat_template == "J{{ 2 }}"  # the tokenizer agrees
    # The processor's files, as transformers' ProcessorMixin.get_processor_dict reads them.
    write_json(directory / "chat_template.json", {"chat_template": "L{{ 3 }}"})
    assert ChatTemplate.from_model_dir(directory).source == "L{{ 3 }}"
    processor = json.loads((model_dir / "processor_config.json").read_text()) if (
        model_dir / "processor_config.json").exists() else {}
    write_json(directory / "processor_config.json", processor | {"chat_template": "P{{ 4 }}"})
    assert ChatTemplate.from_model_dir(directory).source == "P{{ 4 }}"


def test_named_templates_give_their_default(model_dir: Path, tmp_path: Path) -> None:
    directory = _without_templates(model_dir, tmp_path)
    named = [{"name": "tool_use", "template": "tools"}, {"name": "default", "template": "plain"}]
    edit_json(directory / "tokenizer_config.json", lambda c: c | {"chat_template": named})
    assert ChatTemplate.from_model_dir(directory).source == "plain"
    assert hf_tokenizer(directory).get_chat_template() == "plain"
    edit_json(directory / "tokenizer_config.json", lambda c: c | {"chat_template": named[:1]})
    with pytest.raises(ChatTemplateError, match="no 'default'"):
        ChatTemplate.from_model_dir(directory)


def test_a_model_of_another_family_is_refused(model_dir: Path, tmp_path: Path) -> None:
    directory = shutil.copytree(model_dir, tmp_path / "model")
    config = json.loads((directory / "config.json").read_text())
    edit_json(directory / "config.json", lambda c: c | {"model_type": "mllama"})
    with pytest.raises(ChatTemplateError, match="no known image marker"):
        ChatTemplate.from_model_dir(directory)
    if config["model_type"] == "llava":
        # Llava with CLIP's tower (llava-1.5) writes "<image>", not Pixtral's "[IMG]".
        clip = config | {"vision_config": {"model_type": "clip_vision_model"}}
        write_json(directory / "config.json", clip)
        with pytest.raises(ChatTemplateError, match="clip_vision_model"):
            ChatTemplate.from_model_dir(directory)
    (directory / "config.json").unlink()
    with pytest.raises(ChatTemplateError, match=r"no config\.json"):
        ChatTemplate.from_model_dir(directory)


def test_a_template_with_a_syntax_error_is_refused_when_built() -> None:
    with pytest.raises(ChatTemplateError, match="not valid Jinja"):
        ChatTemplate("{% for m in messages %}", {}, "[IMG]", False)


# --- published as JSON ----------------------------------------------------------------------


def test_json_round_trip(model_dir: Path) -> None:
    template = ChatTemplate.from_model_dir(model_dir)
    again = ChatTemplate.from_json(template.to_json())
    assert again == template
    assert again.render(CONVERSATIONS["multi-turn"]) == template.render(CONVERSATIONS["multi-turn"])


GOOD: Mapping[str, Any] = {
    "version": 1, "source": "{{ bos_token }}", "special_tokens": {"bos_token": "<s>"},
    "image_marker": "[IMG]", "adds_bos": True,
}
BAD_JSON = {
    "unknown key": {**GOOD, "extra": 1},
    "missing key": {k: v for k, v in GOOD.items() if k != "adds_bos"},
    "version 2": {**GOOD, "version": 2},
    "version as bool": {**GOOD, "version": True},
    "source not str": {**GOOD, "source": 3},
    "empty source": {**GOOD, "source": ""},
    "special tokens a list": {**GOOD, "special_tokens": ["<s>"]},
    "special token not str": {**GOOD, "special_tokens": {"bos_token": 1}},
    "special token not a token's name": {**GOOD, "special_tokens": {"messages": "<s>"}},
    "empty marker": {**GOOD, "image_marker": ""},
    "adds_bos as int": {**GOOD, "adds_bos": 1},
    "syntax error": {**GOOD, "source": "{% if %}"},
}


@pytest.mark.parametrize("case", BAD_JSON)
def test_from_json_is_strict(case: str) -> None:
    assert ChatTemplate.from_json(json.dumps(GOOD)).adds_bos is True
    with pytest.raises(ChatTemplateError):
        ChatTemplate.from_json(json.dumps(BAD_JSON[case]))


@pytest.mark.parametrize("text", ["", "[1]", "{", "null"])
def test_from_json_refuses_what_is_not_an_object(text: str) -> None:
    with pytest.raises(ChatTemplateError):
        ChatTemplate.from_json(text)
