"""transformers' own processor of a model directory, with or without torchvision.

`AutoProcessor` builds either family's processor only where torchvision is installed:
Qwen2VLProcessor insists on a video processor, which needs it, and Pixtral's processor module
imports one helper from its torchvision image processor. Without torchvision the same processor
classes are built here from the directory's files around the families' PIL image processors,
so the placeholder expansion under test is still the processor's own code.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from worker.tiny.tokenizer import TinyTokenizerFamily

_PIXTRAL_SETTINGS = (
    "patch_size",
    "spatial_merge_size",
    "image_token",
    "image_break_token",
    "image_end_token",
)


def has_torchvision() -> bool:
    return importlib.util.find_spec("torchvision") is not None


def hf_processor(model_dir: Path, family: TinyTokenizerFamily) -> Any:
    """The family's transformers processor for `model_dir`: AutoProcessor where it loads."""
    from transformers import AutoProcessor, AutoTokenizer

    if has_torchvision():
        return AutoProcessor.from_pretrained(model_dir)  # type: ignore[no-untyped-call]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    preprocessor = _read_json(model_dir / "preprocessor_config.json")
    if family == "pixtral":
        from transformers.models.pixtral.image_processing_pil_pixtral import (
            PixtralImageProcessorPil,
        )

        settings = _read_json(model_dir / "processor_config.json")
        return pixtral_processor_class()(
            image_processor=PixtralImageProcessorPil.from_dict(preprocessor),
            tokenizer=tokenizer,
            **{name: settings[name] for name in _PIXTRAL_SETTINGS},
        )
    return qwen2_vl_processor(tokenizer, preprocessor)


def pixtral_processor_class() -> Any:
    """PixtralProcessor; its module's one torchvision import is served by the PIL module's
    copy of the same helper, for that import only."""
    from transformers.models.pixtral import image_processing_pil_pixtral

    module = "transformers.models.pixtral.processing_pixtral"
    helper = "transformers.models.pixtral.image_processing_pixtral"
    if module in sys.modules or has_torchvision():
        return importlib.import_module(module).PixtralProcessor
    stand_in = types.ModuleType(helper)
    stand_in.get_resize_output_image_size = (  # type: ignore[attr-defined]
        image_processing_pil_pixtral.get_resize_output_image_size
    )
    sys.modules[helper] = stand_in
    try:
        return importlib.import_module(module).PixtralProcessor
    finally:
        del sys.modules[helper]


def qwen2_vl_processor(tokenizer: Any, preprocessor: Mapping[str, Any]) -> Any:
    """Qwen2VLProcessor with the attributes its __init__ sets for images; no video processor.
    Its __call__, which expands <|image_pad|> per image, runs unchanged."""
    from transformers import Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    processor = Qwen2VLProcessor.__new__(Qwen2VLProcessor)
    processor.image_processor = Qwen2VLImageProcessorPil.from_dict(dict(preprocessor))
    processor.tokenizer = tokenizer
    processor.chat_template = None
    processor.image_token = "<|image_pad|>"
    processor.image_token_id = tokenizer.convert_tokens_to_ids(processor.image_token)
    processor.video_token = "<|video_pad|>"
    processor.video_token_id = tokenizer.convert_tokens_to_ids(processor.video_token)
    return processor


def _read_json(path: Path) -> dict[str, Any]:
    content: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return content
