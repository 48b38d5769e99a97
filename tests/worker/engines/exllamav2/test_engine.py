"""The exllamav2 engine on a CPU: everything but its forward passes, with exllamav2's real code.

exllamav2 0.3.2 runs here for real (config, tokenizer, embedding containers, jobs, sampler
settings, its vision post-processing); its generator, which needs CUDA, is replaced at the
engine's declared seam by `ScriptedGenerator`. `scripts/gpu-check` covers the rest on a GPU.
"""

from __future__ import annotations

import importlib
import json
import random
import threading
import types
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from bench import gpu_check
from tests.support.exllamav2_cpu import ScriptedGenerator
from tests.support.transformers_fixtures import pattern_image
from worker.encoding.prompt_encoder import PromptEncoder
from worker.engines import EngineKind
from worker.engines.exllamav2.embeddings import (
    EmbeddingCache,
    assemble_span_rows,
    place_embedding,
    request_embeddings,
)
from worker.engines.exllamav2.engine import start_exllamav2_language, start_exllamav2_vision
from worker.engines.exllamav2.jobs import JobStream, make_job, sampler_settings
from worker.engines.exllamav2.language import ExLlamaV2Language
from worker.engines.exllamav2.model import (
    ExLlamaV2Settings,
    ExLlamaV2Vlm,
    Part,
    load_exllamav2_vlm,
)
from worker.engines.exllamav2.vision import ExLlamaV2Vision
from worker.engines.transformers.model import TransformersVlm
from worker.engines.transformers.vision import TransformersVision
from worker.errors import (
    AliasWithoutSpanError,
    EngineClosedError,
    InvalidRequestError,
    PromptTooLongError,
    StaleEpochError,
    UnsupportedImageShapeError,
)
from worker.generation import FinishReason, GenerationRequest, GenerationResult
from worker.images.vlm_family import VlmFamily
from worker.sampling_params import SamplingParams
from worker.span import Span
from worker.tiny.model import write_tiny_model
from worker.token_range import RESERVED_ID_BASE, TokenRange

# Only after tests.support.exllamav2_cpu, which lets exllamav2 import without its CUDA extension.
exllamav2_embeddings = importlib.import_module("exllamav2.generator.dynamic_embeddings")
exllamav2_pixtral = importlib.import_module("exllamav2.vlm.processor.pixtral")
exllamav2_qwen2 = importlib.import_module("exllamav2.vlm.processor.qwen2")
exllamav2_dynamic = importlib.import_module("exllamav2.generator.dynamic")

SETTINGS = ExLlamaV2Settings(cache_tokens=4096, max_batch_size=4)


@pytest.fixture(scope="session")
def exl(vlm: TransformersVlm, tmp_path_factory: pytest.TempPathFactory) -> ExLlamaV2Vlm:
    """The tiny model of `vlm`'s family (same seed, same bytes), read by exllamav2."""
    model_dir = tmp_path_factory.getbasetemp() / f"exllamav2-{vlm.family}"
    write_tiny_model(model_dir, vlm.family.value)  # type: ignore[arg-type]
    return load_exllamav2_vlm(model_dir, SETTINGS, load_weights=False)


def image_span(exl: ExLlamaV2Vlm, size: tuple[int, int], first: int, epoch: int = 1) -> Span:
    layout = ExLlamaV2Vision(exl).layout_for(*size)
    return Span(f"<img{first}>", TokenRange(epoch, first, layout.num_rows), layout)


def random_rows(exl: ExLlamaV2Vlm, span: Span, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    shape = (span.row_layout.num_image_rows, exl.hidden_size)
    return torch.randn(shape, generator=generator).to(torch.float16)


# Config, tokenizer, layouts


def test_config_is_read_as_exllamav2_reads_it(exl: ExLlamaV2Vlm, vlm: TransformersVlm) -> None:
    config = exl.config
    raw = json.loads((exl.model_dir / "config.json").read_text())
    preprocessor = json.loads((exl.model_dir / "preprocessor_config.json").read_text())
    assert exl.family is vlm.family
    assert config.architecture == raw["architectures"][0]
    assert exl.hidden_size == vlm.model.config.text_config.hidden_size
    assert (exl.image_token_id, exl.image_params, exl.eos_token_ids) == (
        vlm.image_token_id, vlm.image_params, vlm.eos_token_ids
    )
    assert config.max_seq_len == SETTINGS.cache_tokens  # capped: the tiny model claims 8192
    if exl.family is VlmFamily.PIXTRAL:
        assert config.vision_model_type == "pixtral" and not config.arch.lm.mrope
        assert config.vision_size == preprocessor["size"]
        assert config.vision_patch_size == preprocessor["patch_size"]
        assert config.vision_spatial_merge_size == raw.get("spatial_merge_size", 1)
    else:
        assert config.vision_model_type == "qwen2" and config.arch.lm.mrope
        assert (config.vision_min_pixels, config.vision_max_pixels) == (
            preprocessor["min_pixels"], preprocessor["max_pixels"])
        assert config.vision_spatial_merge_size == preprocessor["merge_size"]
        assert config.mrope_section == raw["rope_scaling"]["mrope_section"]


@pytest.mark.parametrize(
    "settings", [{"cache_tokens": 1000}, {"max_chunk_size": 300}, {"max_seq_len": 10**6},
                 {"max_batch_size": 0}],
)
def test_settings_refuse_sizes_exllamav2_cannot_take(settings: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        ExLlamaV2Settings(**settings)


class RecordingLoader:
    """The `WeightLoader` seam: records what it was asked to put on the GPU, loads nothing."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def load_vision(self, vision_tower: Any) -> None:
        self.calls.append(f"vision {type(vision_tower).__name__}")

    def load_language(self, model: Any, cache_tokens: int) -> Any:
        self.calls.append(f"language {type(model).__name__} cache {cache_tokens}")
        return types.SimpleNamespace(max_seq_len=cache_tokens, batch_size=1)


def engine_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("vlmq-")}


def test_the_vision_side_loads_the_tower_only(exl: ExLlamaV2Vlm) -> None:
    """No text model, no KV cache, no generator or its thread in a vision actor."""
    loader, threads = RecordingLoader(), engine_threads()
    vision = start_exllamav2_vision(exl.model_dir, SETTINGS, loader=loader)
    assert loader.calls == ["vision ExLlamaV2VisionTower"]
    assert (vision.vlm.model, vision.vlm.cache, vision.vlm.parts) == (None, None, Part.VISION)
    assert engine_threads() == threads
    assert vision.layout_for(40, 40) == ExLlamaV2Vision(exl).layout_for(40, 40)


def test_the_language_side_loads_the_text_model_and_cache_only(exl: ExLlamaV2Vlm) -> None:
    loader = RecordingLoader()
    generator = ScriptedGenerator(exl.tokenizer, {"a": completion(exl, 2, 0)})
    engine = start_exllamav2_language(exl.model_dir, SETTINGS, loader=loader, generator=generator)
    try:
        assert loader.calls == [f"language ExLlamaV2 cache {SETTINGS.cache_tokens}"]
        assert engine.vlm.vision_tower is None and engine.vlm.parts is Part.LANGUAGE
        assert engine.vlm.cache.max_seq_len == SETTINGS.cache_tokens
        result = engine.submit(GenerationRequest("a", "hello", (), ())).result(timeout=30)
        assert result.text == expected_text(exl, completion(exl, 2, 0)[:-1])
    finally:
        engine.close()


def with_context(exl: ExLlamaV2Vlm, directory: Path, context: int) -> Path:
    """A copy of `exl`'s model directory whose config claims a context of `context` tokens."""
    directory.mkdir()
    for source in exl.model_dir.iterdir():
        (directory / source.name).symlink_to(source)
    raw = json.loads((exl.model_dir / "config.json").read_text())
    for section in (raw, raw.get("text_config") or {}):
        if "max_position_embeddings" in section:
            section["max_position_embeddings"] = context
    (directory / "config.json").unlink()
    (directory / "config.json").write_text(json.dumps(raw))
    return directory


@pytest.mark.parametrize(
    ("context", "settings", "match"),
    [
        (8192, {"cache_tokens": 1024}, "max_chunk_size 2048 exceeds the context of 1024 tokens"),
        (8192, {"max_seq_len": 1024}, "exceeds the context of 1024 tokens"),
        (1024, {}, r"the model's 1024"),
        (8192, {"max_batch_size": 257}, "max_batch_size 257 needs 8 tokens"),
        (8192, {"max_batch_size": 64, "max_chunk_size": 256}, "more than max_chunk_size 256"),
        (8192, {"paged": True}, "flash-attn"),
    ],
)
def test_settings_that_exllamav2s_generator_would_assert_on_are_refused_before_loading(
    exl: ExLlamaV2Vlm, tmp_path: Path, context: int, settings: dict[str, Any], match: str
) -> None:
    model_dir = with_context(exl, tmp_path / "model", context)
    loader = RecordingLoader()
    with pytest.raises(ValueError, match=match):
        load_exllamav2_vlm(model_dir, ExLlamaV2Settings(**settings), parts=Part.LANGUAGE,
                           loader=loader)
    assert loader.calls == []  # refused before any weight moved
    # The vision side has no cache and no generator: the same settings are fine there.
    load_exllamav2_vlm(model_dir, ExLlamaV2Settings(**settings), parts=Part.VISION,
                       load_weights=False)


GENERATOR_SETTINGS: list[dict[str, Any]] = [
    {"cache_tokens": c, "max_chunk_size": k, "max_batch_size": b}
    for c in (256, 1024, 4096) for k in (256, 512, 2048, 4096) for b in (1, 32, 33, 64, 512)
]


@pytest.mark.parametrize("context", [512, 2048, 8192])
def test_settings_pass_the_check_exactly_when_exllamav2s_generator_takes_them(
    exl: ExLlamaV2Vlm, tmp_path: Path, context: int
) -> None:
    """exllamav2's own `ExLlamaV2DynamicGenerator.__init__` (unpaged: paged needs flash-attn)
    on a stand-in for the loaded model: its config as `load_autosplit` leaves it (max_input_len
    cut to max_seq_len) and a cache of cache_tokens."""
    model_dir = with_context(exl, tmp_path / "model", context)
    agreed = 0
    for fields in GENERATOR_SETTINGS:
        settings = ExLlamaV2Settings(**fields)
        try:
            vlm = load_exllamav2_vlm(model_dir, settings, parts=Part.LANGUAGE, load_weights=False)
        except ValueError:
            ours = False
            vlm = load_exllamav2_vlm(model_dir, settings, parts=Part.VISION, load_weights=False)
        else:
            ours = True
        config = vlm.config
        config.max_input_len = min(config.max_input_len, config.max_seq_len)  # load_autosplit
        model = types.SimpleNamespace(config=config)
        cache = types.SimpleNamespace(batch_size=1, max_seq_len=settings.cache_tokens)
        try:
            exllamav2_dynamic.ExLlamaV2DynamicGenerator(
                model=model, cache=cache, tokenizer=vlm.tokenizer, paged=False,
                max_batch_size=settings.max_batch_size, max_chunk_size=settings.max_chunk_size,
                max_sampling_threads=1, filter_background_eval=False,
            )
        except AssertionError:
            theirs = False
        else:
            theirs = True
        assert ours == theirs, (context, fields)
        agreed += theirs
    assert 0 < agreed < len(GENERATOR_SETTINGS)  # both kinds seen


def test_our_prompt_ids_are_exllamav2s_with_embeddings_at_our_ranges(exl: ExLlamaV2Vlm) -> None:
    spans = [image_span(exl, (40, 40), RESERVED_ID_BASE + 500),
             image_span(exl, (70, 45), RESERVED_ID_BASE + 9000)]
    prompt = f"Compare {spans[0].alias} with {spans[1].alias}, then {spans[0].alias} again."
    placed = [place_embedding(exl.model, s, torch.zeros(s.token_range.length, exl.hidden_size,
                                                        dtype=torch.float16)) for s in spans]
    for add_bos in (True, False):  # exllamav2 takes add_bos explicitly; so does the engine
        ours = PromptEncoder(exl.text_tokenizer).encode(prompt, spans, add_bos=add_bos)
        theirs = exl.tokenizer.encode(
            prompt, add_bos=add_bos, encode_special_tokens=True, embeddings=placed
        )[0].tolist()
        assert ours == theirs, add_bos
        assert ours.count(RESERVED_ID_BASE + 500) == 2 and RESERVED_ID_BASE + 9000 in ours


def exllamav2_resized_size(exl: ExLlamaV2Vlm, width: int, height: int) -> tuple[int, int]:
    """(width, height) as exllamav2's own preprocess resizes an image, by the helpers it calls."""
    from exllamav2.vlm.util import size_to_longest_edge_and_patch_size, smart_resize

    config = exl.config
    if exl.family is VlmFamily.PIXTRAL:
        edge = config.vision_size["longest_edge"]
        multiple = tuple(config.vision_patch_size[d] * 2 for d in ("height", "width"))
        resized = size_to_longest_edge_and_patch_size((width, height), (edge, edge), multiple)
    else:
        factor = config.vision_spatial_patch_size * config.vision_spatial_merge_size
        resized = smart_resize(
            (width, height), factor, config.vision_min_pixels, config.vision_max_pixels
        )
    return int(resized[0]), int(resized[1])


SIZES = [(1, 1), (16, 16), (27, 300), (28, 28), (40, 40), (45, 70), (70, 45), (100, 60),
         (224, 224), (300, 200), (448, 224), (500, 12), (12, 500), (640, 480), (1000, 30),
         (1024, 1024), (5000, 20), (16000, 20)]


def test_layouts_equal_the_transformers_engines(exl: ExLlamaV2Vlm, vlm: TransformersVlm) -> None:
    """Both engines lay images out by one rule and refuse the same sizes, including an image so
    wide that its short side scales to zero, which exllamav2's own Pixtral resize would round up
    to two patches and vlmq's shared rule (`worker/images/visual_tokens.py`) refuses."""
    ours, theirs = ExLlamaV2Vision(exl), TransformersVision(vlm)
    for size in SIZES:
        try:
            expected = theirs.layout_for(*size)
        except UnsupportedImageShapeError:
            if exl.family is VlmFamily.PIXTRAL and size == (16000, 20):
                assert exllamav2_resized_size(exl, *size) == (256, 32)  # exllamav2 would take it
            with pytest.raises(UnsupportedImageShapeError):
                ours.layout_for(*size)
            continue
        assert ours.layout_for(*size) == expected, size


def test_layout_is_the_count_of_rows_exllamav2s_preprocess_produces(exl: ExLlamaV2Vlm) -> None:
    vision = ExLlamaV2Vision(exl)
    for size in [(40, 40), (100, 60), (448, 224)]:
        pixels, resized, _, _ = exl.vision_tower.preprocess_func(exl.config, pattern_image(
            *size, seed=1))
        assert resized == exllamav2_resized_size(exl, *size)
        patch = exl.config.vision_patch_size["height"]
        num_patches = resized[0] // patch * (resized[1] // patch)
        merged = num_patches // exl.config.vision_spatial_merge_size**2
        assert vision.layout_for(*size).num_image_rows == merged
        if exl.family is VlmFamily.QWEN2_VL:
            assert pixels.shape[0] == num_patches  # one flattened row per patch


# Embedding rows and their placement


def test_span_rows_are_exllamav2s_postprocess_laid_out_as_the_reference(
    exl: ExLlamaV2Vlm, vlm: TransformersVlm
) -> None:
    """exllamav2's own postprocess on the same rows, with our embedding table seam: equal for
    Qwen2-VL; for Pixtral equal once its extra `[IMG_BREAK]` before `[IMG_END]` is removed."""
    span = image_span(exl, (100, 60), RESERVED_ID_BASE)
    image_rows = random_rows(exl, span)
    rows = assemble_span_rows(span, image_rows, exl.embed_tokens)
    table = vlm.embed_tokens.weight.detach().to(torch.float16)
    embedding_module: Any = type("Embedding", (), {"forward": staticmethod(exl.embed_tokens)})
    model: Any = type("Model", (), {"modules": [embedding_module], "config": exl.config})
    grid = span.row_layout.grid
    assert grid is not None
    if exl.family is VlmFamily.PIXTRAL:
        theirs, _, _ = exllamav2_pixtral.postprocess(
            model, exl.tokenizer, image_rows, grid.height, grid.width)
        assert torch.equal(theirs[-1], table[span.row_layout.text_rows[-1][1]])
        theirs = torch.cat([theirs[:-2], theirs[-1:]])
    else:
        theirs, pre, post = exllamav2_qwen2.postprocess(
            model, exl.tokenizer, image_rows, grid.height, grid.width)
        assert (pre, post) == (span.row_layout.num_pre_tokens, span.row_layout.num_post_tokens)
    assert torch.equal(rows, theirs.to(torch.float16))
    for offset, token_id in span.row_layout.text_rows:
        assert torch.equal(rows[offset], table[token_id])  # the transformers model's own table


def test_embeddings_are_placed_at_our_ranges_without_exllamav2s_counter(
    exl: ExLlamaV2Vlm,
) -> None:
    span = image_span(exl, (70, 45), RESERVED_ID_BASE + 4242)
    rows = torch.zeros(span.token_range.length, exl.hidden_size, dtype=torch.float16)
    counter = exllamav2_embeddings.global_allocator.next_token_index
    placed = place_embedding(exl.model, span, rows)
    assert exllamav2_embeddings.global_allocator.next_token_index == counter
    layout = span.row_layout
    assert placed.get_ids() == list(span.token_range.ids())
    assert placed.get_vision_token_range() == (
        span.token_range.first + layout.num_pre_tokens,
        span.token_range.end - layout.num_post_tokens,
    )
    assert placed.text_alias == span.alias and placed.embeddings is rows
    assert layout.grid is not None
    assert placed.thw_grid == (layout.grid.frames, layout.grid.height, layout.grid.width)
    assert placed.get_size_in_bytes() == rows.numel() * 2
    # Every attribute exllamav2's constructor sets, and no other (its counter is put back).
    constructed = exllamav2_embeddings.ExLlamaV2MMEmbedding(exl.model, rows, span.alias)
    exllamav2_embeddings.global_allocator.next_token_index = counter
    assert set(vars(placed)) == set(vars(constructed))
    with pytest.raises(InvalidRequestError, match="do not fit"):
        place_embedding(exl.model, span, rows[1:])


def test_embedding_cache_evicts_least_recently_used_by_bytes(exl: ExLlamaV2Vlm) -> None:
    spans = [image_span(exl, (40, 40), RESERVED_ID_BASE + 1000 * i) for i in range(4)]
    placed = [place_embedding(exl.model, span, torch.zeros(
        span.token_range.length, exl.hidden_size, dtype=torch.float16)) for span in spans]
    one = spans[0].token_range.length * exl.hidden_size * 2
    cache = EmbeddingCache(max_bytes=3 * one)
    for span, embedding in zip(spans[:3], placed, strict=False):
        cache.put(span.token_range, embedding)
    assert cache.get(spans[0].token_range) is placed[0]  # now the most recent
    cache.put(spans[3].token_range, placed[3])
    assert cache.get(spans[1].token_range) is None
    assert (len(cache), cache.size, cache.num_hits, cache.num_misses) == (3, 3 * one, 1, 1)
    tiny = EmbeddingCache(max_bytes=1)
    tiny.put(spans[0].token_range, cache.get(spans[0].token_range))
    assert len(tiny) == 1  # the newest stays even when it alone is over the bound


def test_a_repeated_range_reuses_one_placed_embedding(exl: ExLlamaV2Vlm) -> None:
    a, b = image_span(exl, (40, 40), RESERVED_ID_BASE), image_span(exl, (70, 45), 2 * 10**9)
    cache = EmbeddingCache(2**24)
    first = request_embeddings([a, b, a], [random_rows(exl, s) for s in (a, b, a)],
                               exl.model, exl.embed_tokens, cache)
    again = request_embeddings([a], [random_rows(exl, a)], exl.model, exl.embed_tokens, cache)
    assert len(first) == 2 and again[0] is first[0]
    assert [e.first_index for e in first] == [a.token_range.first, b.token_range.first]
    assert (cache.num_misses, cache.num_hits) == (2, 1)
    narrow = random_rows(exl, b)[:, :8]
    with pytest.raises(InvalidRequestError, match="wide"):
        request_embeddings([b], [narrow], exl.model, exl.embed_tokens, EmbeddingCache(2**24))


# Jobs and results


def test_sampling_maps_to_exllamav2s_settings() -> None:
    for greedy in (SamplingParams(), SamplingParams(temperature=0.7, top_k=1)):
        settings = sampler_settings(greedy)
        assert (settings.top_k, settings.token_repetition_penalty) == (1, 1.0)
    settings = sampler_settings(SamplingParams(temperature=0.7, top_p=0.9, top_k=20))
    assert (settings.temperature, settings.top_p, settings.top_k) == (0.7, 0.9, 20)
    assert settings.token_repetition_penalty == 1.0  # exllamav2's default is 1.025
    off = (settings.min_p, settings.top_a, settings.tfs, settings.typical, settings.skew,
           settings.xtc_probability, settings.dry_multiplier, settings.mirostat)
    assert not any(off)


def test_a_job_carries_the_request(exl: ExLlamaV2Vlm) -> None:
    span = image_span(exl, (40, 40), RESERVED_ID_BASE)
    sampling = SamplingParams(max_new_tokens=5, temperature=0.5, seed=7, stop_strings=("\n\n",))
    request = GenerationRequest("r-1", f"{span.alias} hi", (span,), (random_rows(exl, span),),
                                sampling)
    ids, embeddings = [1, *span.token_range.ids(), 42], [object()]
    job = make_job(request, ids, embeddings, exl.eos_token_ids, return_logits=True)
    assert job.sequences[0].input_ids.torch()[0].tolist() == ids
    assert (job.max_new_tokens, job.identifier, job.embeddings) == (5, "r-1", embeddings)
    assert (job.stop_tokens, job.stop_strings) == (set(exl.eos_token_ids), {"\n\n"})
    assert job.gen_settings.temperature == 0.5 and job.return_logits
    twin = make_job(request, ids, embeddings, exl.eos_token_ids)
    assert [job.rng.random() for _ in range(3)] == [twin.rng.random() for _ in range(3)]


def streaming(serial: int, **fields: Any) -> dict[str, Any]:
    """A result dict as `ExLlamaV2DynamicGenerator.iterate()` emits it while streaming."""
    return {"job": None, "stage": "streaming", "eos": False, "serial": serial,
            "identifier": "r", **fields}


def final(reason: str, full: str, **fields: Any) -> dict[str, Any]:
    return streaming(
        3, eos=True, eos_reason=reason, full_completion=full, new_tokens=4, prompt_tokens=17,
        time_enqueued=0.5, time_prefill=0.25, time_generate=1.0, cached_pages=0,
        cached_tokens=12, **fields,
    )


def convert(sampling: SamplingParams, *results: dict[str, Any]) -> GenerationResult:
    request = GenerationRequest("r", "hi", (), (), sampling)
    stream = JobStream(request, waited_s=0.125)
    converted = [stream.receive(result) for result in results]
    assert all(c is None for c in converted[:-1]) and converted[-1] is not None
    assert converted[-1].num_cached_tokens == 12
    return converted[-1].result


def test_a_stop_token_ends_the_text_and_is_not_a_completion_token() -> None:
    result = convert(
        SamplingParams(stop_strings=("END",)),
        {"job": None, "stage": "started", "eos": False, "serial": 3, "identifier": "r"},
        {"job": None, "stage": "prefill", "eos": False, "serial": 3, "identifier": "r",
         "curr_progress": 16, "max_progress": 16},
        streaming(3, text="Hel", token_ids=torch.tensor([[10, 11]])),
        streaming(3),  # " E" held back: it may begin "END"
        final("stop_token", "Hel", eos_triggering_token_id=2, eos_triggering_token_str="</s>",
              held={"text": " E", "token_ids": torch.tensor([[12, 2]])}),
    )
    assert (result.text, result.finish_reason) == ("Hel E", FinishReason.EOS)
    assert (result.completion_ids, result.num_completion_tokens) == ((10, 11, 12), 3)
    assert result.num_prompt_tokens == 17
    assert (result.timings.queue_s, result.timings.prefill_s, result.timings.decode_s) == (
        0.625, 0.25, 1.0)


def test_a_stop_string_ends_the_text_before_it() -> None:
    result = convert(
        SamplingParams(stop_strings=("END",)),
        streaming(3, text="ab", token_ids=torch.tensor([[5]])),
        final("stop_string", "ab cd", text=" cd", token_ids=torch.tensor([[6, 7]]),
              eos_triggering_string="END", held={"text": "END"}),
    )
    assert (result.text, result.finish_reason, result.completion_ids) == (
        "ab cd", FinishReason.STOP_STRING, (5, 6, 7))


@pytest.mark.parametrize(
    ("stop_strings", "text", "reason"),
    [((), "one two", FinishReason.LENGTH), (("two",), "one ", FinishReason.STOP_STRING)],
)
def test_the_length_limit_ends_a_text_unless_a_stop_string_appeared(
    stop_strings: tuple[str, ...], text: str, reason: FinishReason
) -> None:
    # exllamav2 tests the length first, so the token that completes a stop string can end
    # the request as max_new_tokens; vlmq ends before the stop string either way.
    result = convert(
        SamplingParams(max_new_tokens=2, stop_strings=stop_strings),
        final("max_new_tokens", "one two", text="one two", token_ids=torch.tensor([[8, 9]])),
    )
    assert (result.text, result.finish_reason, result.num_completion_tokens) == (text, reason, 2)


def test_an_unknown_end_is_an_error() -> None:
    with pytest.raises(ValueError, match="end_filter"):
        convert(SamplingParams(), final("end_filter", "x"))


# The engine's thread, with exllamav2's generator replaced at the seam


def completion(exl: ExLlamaV2Vlm, length: int, seed: int, eos: bool = True) -> list[int]:
    rng = random.Random(seed)
    tokens = [rng.randrange(100, 400) for _ in range(length)]
    return [*tokens, min(exl.eos_token_ids)] if eos else tokens


def expected_text(exl: ExLlamaV2Vlm, tokens: list[int]) -> str:
    pieces = exl.tokenizer.get_id_to_piece_list(False)
    return "".join(pieces[t] for t in tokens)


def run_engine(
    exl: ExLlamaV2Vlm, completions: dict[str, list[int]], requests: list[GenerationRequest]
) -> tuple[list[Future[GenerationResult]], ScriptedGenerator, ExLlamaV2Language]:
    generator = ScriptedGenerator(exl.tokenizer, completions, max_batch_size=3)
    engine = ExLlamaV2Language(exl, SETTINGS, generator=generator)
    futures = [engine.submit(r) for r in requests]
    for future in futures:
        future.exception(timeout=30)
    engine.close()
    return futures, generator, engine


def test_requests_sharing_images_run_as_one_batch(exl: ExLlamaV2Vlm) -> None:
    a, b = image_span(exl, (40, 40), RESERVED_ID_BASE), image_span(exl, (70, 45), 2 * 10**9)
    rows = {a: random_rows(exl, a, 1), b: random_rows(exl, b, 2)}
    chosen = [[a], [b], [a], [a, b], [b], [a]]
    requests = [
        GenerationRequest(f"r{i}", "".join(s.alias for s in spans) + f" question {i}",
                          tuple(spans), tuple(rows[s] for s in spans),
                          SamplingParams(max_new_tokens=6))
        for i, spans in enumerate(chosen)
    ]
    completions = {f"r{i}": completion(exl, 3 + i % 5, seed=i, eos=i != 4) for i in range(6)}
    futures, generator, engine = run_engine(exl, completions, requests)
    encoder = PromptEncoder(exl.text_tokenizer)
    for request, future, job in zip(requests, futures, generator.jobs, strict=True):
        result, tokens = future.result(), completions[request.request_id]
        ends_at_eos = tokens[-1] in exl.eos_token_ids and len(tokens) - 1 < 6  # max_new_tokens
        expected = tokens[:-1] if ends_at_eos else tokens[:6]
        assert result.completion_ids == tuple(expected)
        assert result.text == expected_text(exl, expected)
        assert result.finish_reason == (FinishReason.EOS if ends_at_eos else FinishReason.LENGTH)
        ids = encoder.encode(request.prompt, request.spans)
        assert job.sequences[0].input_ids.torch()[0].tolist() == ids
        assert result.num_prompt_tokens == len(ids)
        assert [e.first_index for e in job.embeddings] == [s.token_range.first
                                                           for s in request.spans]
    assert generator.jobs[0].embeddings[0] is generator.jobs[2].embeddings[0]
    assert (engine.embedding_cache.num_misses, engine.embedding_cache.num_hits) == (2, 5)
    cached = {f.result.request_id: f.num_cached_tokens for f in engine.recent_finished()}
    assert cached["r0"] == 0 and cached["r2"] > a.token_range.length  # BOS + A's rows
    assert cached["r5"] > a.token_range.length and cached["r1"] == 0
    # Each result carries its own count, which the generator actor exports as prefix-cache hits.
    assert {r.request_id: f.result().num_cached_tokens
            for r, f in zip(requests, futures, strict=True)} == cached


def test_a_bad_request_fails_alone(exl: ExLlamaV2Vlm) -> None:
    span = image_span(exl, (40, 40), RESERVED_ID_BASE)
    good = GenerationRequest("good", f"{span.alias} ok", (span,), (random_rows(exl, span),),
                             SamplingParams(max_new_tokens=3))
    bad = [
        replace(good, request_id="stray-alias", prompt=f"{span.alias} <image>"),
        replace(good, request_id="too-long", sampling=SamplingParams(max_new_tokens=5000)),
        replace(good, request_id="narrow", features=(random_rows(exl, span)[:, :8],)),
    ]
    completions = {r.request_id: completion(exl, 2, seed=0) for r in [good, *bad]}
    futures, _, _ = run_engine(exl, completions, [bad[0], good, bad[1], bad[2]])
    assert isinstance(futures[0].exception(), AliasWithoutSpanError)
    assert futures[1].result().text == expected_text(exl, completions["good"][:-1])
    assert isinstance(futures[2].exception(), PromptTooLongError)
    assert isinstance(futures[3].exception(), InvalidRequestError)


def test_a_newer_epoch_waits_for_the_older_then_drops_every_page(exl: ExLlamaV2Vlm) -> None:
    old = image_span(exl, (40, 40), RESERVED_ID_BASE, epoch=3)
    new = replace(old, token_range=replace(old.token_range, epoch=4))  # the same IDs, reused
    rows = random_rows(exl, old)

    def ask(request_id: str, span: Span, max_new_tokens: int = 3) -> GenerationRequest:
        return GenerationRequest(request_id, f"{span.alias} what?", (span,), (rows,),
                                 SamplingParams(max_new_tokens=max_new_tokens))

    requests = [ask("old", old, 40), ask("old-again", old), ask("new", new),
                ask("new-again", new), ask("stale", old)]
    completions = {r.request_id: completion(exl, 50, seed=1, eos=False) for r in requests}
    futures, generator, engine = run_engine(exl, completions, requests)
    assert isinstance(futures[4].exception(), StaleEpochError)
    assert [f.result().num_completion_tokens for f in futures[:4]] == [40, 3, 3, 3]
    events = generator.events
    assert events.count("reset") == 2 and events[0] == "reset"
    second_reset = events.index("reset", 1)
    assert {"finish old", "finish old-again"} <= set(events[:second_reset])
    assert {"start new", "start new-again"} <= set(events[second_reset:])
    cached = {f.result.request_id: f.num_cached_tokens for f in engine.recent_finished()}
    assert cached["old-again"] > 0 and cached["new"] == 0 and cached["new-again"] > 0
    assert engine.num_page_table_resets == 2 and engine.epoch_gate.current_epoch == 4


def test_a_failed_step_fails_its_requests_and_the_engine_goes_on(exl: ExLlamaV2Vlm) -> None:
    generator = ScriptedGenerator(exl.tokenizer, {"a": completion(exl, 2, 0),
                                                  "b": completion(exl, 2, 1)})
    engine = ExLlamaV2Language(exl, SETTINGS, generator=generator)
    generator.fail_next_iterate = True
    first = engine.submit(GenerationRequest("a", "hello", (), ()))
    assert isinstance(first.exception(timeout=30), RuntimeError)
    assert engine.submit(GenerationRequest("b", "hello", (), ())).result(timeout=30).text
    engine.close()
    assert isinstance(engine.submit(GenerationRequest("c", "x", (), ())).exception(),
                      EngineClosedError)


def test_close_fails_what_has_not_finished(exl: ExLlamaV2Vlm) -> None:
    generator = ScriptedGenerator(exl.tokenizer, {"long": completion(exl, 4000, 0, eos=False)})
    engine = ExLlamaV2Language(exl, SETTINGS, generator=generator)
    futures = [engine.submit(GenerationRequest("long", "x", (), (),
                                               SamplingParams(max_new_tokens=4000)))
               for _ in range(6)]
    engine.close()
    assert all(f.done() for f in futures)
    assert any(isinstance(f.exception(), EngineClosedError) for f in futures)
    assert generator.num_remaining_jobs() == 0


# The GPU check, up to its first CUDA use


def test_the_gpu_checks_dry_run_passes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table_file = tmp_path / "table.txt"
    assert gpu_check.main(["--dry-run", "--work-dir", str(tmp_path), "--table",
                           str(table_file)]) == 0
    table = capsys.readouterr().out
    assert table.count(" pass ") == 10 and "FAIL" not in table
    for check in ("vision side: tower only", "language side: text model only",
                  "placed embeddings, jobs (dry run)", "actor calls (dry run)"):
        assert table.count(f" {check} ") == 2, check  # both families
    assert "IDs equal exllamav2's encode" in table and "settings fit the model" in table
    assert table_file.read_text() in table and "note: dry run" in table_file.read_text()


@pytest.mark.parametrize("paged", [True, False])
def test_the_gpu_checks_engine_checks_hold_for_exllamav2s_cache_rules(
    exl: ExLlamaV2Vlm, vlm: TransformersVlm, paged: bool
) -> None:
    """What the GPU check asserts of batching, reuse and epochs, here on the scripted generator
    with exllamav2's rules for paged and unpaged caches: the check itself is consistent."""
    images = {name: gpu_check._pattern(*spec) for name, spec in gpu_check.IMAGES.items()}
    rows = {name: TransformersVision(vlm).embed(image).rows for name, image in images.items()}
    spans = gpu_check._spans(ExLlamaV2Vision(exl), images, epoch=1)
    requests = gpu_check._requests(exl.family.value, spans, rows)
    completions = {r: completion(exl, 3, seed=1) for r in ["again", "newer", "stale"]}
    completions |= {r.request_id: completion(exl, 3 + i, seed=i) for i, r in enumerate(requests)}
    generator = ScriptedGenerator(exl.tokenizer, completions, 8, 8192, paged=paged)
    engine = ExLlamaV2Language(exl, gpu_check.SETTINGS, generator=generator)
    try:
        assert "9 requests" in gpu_check._generate(engine, requests)
        assert gpu_check._reuse(engine) == "3 placed, 7 reused"
        assert ("paged" if paged else "unpaged") in gpu_check._prefix_hits(engine, requests)
        assert "newer epoch: 0" in gpu_check._epoch(engine, requests[0])
    finally:
        engine.close()


def test_the_gpu_checks_actor_check_drives_both_actors(
    exl: ExLlamaV2Vlm, vlm: TransformersVlm
) -> None:
    """The actor check's calls, on the transformers engine (the GPU runs them on exllamav2)."""
    images = {name: gpu_check._pattern(*spec) for name, spec in gpu_check.IMAGES.items()}
    rows = {name: TransformersVision(vlm).embed(image).rows for name, image in images.items()}
    requests = gpu_check._requests(
        exl.family.value, gpu_check._spans(ExLlamaV2Vision(exl), images, epoch=1), rows
    )
    detail = gpu_check._actors(exl.model_dir, images, requests, rows, EngineKind.TRANSFORMERS)
    assert "vision: 3 images, relative error 0.0000" in detail
    assert f"generator: {len(gpu_check.BATCH)} requests" in detail


def test_the_gpu_check_reports_a_failed_check() -> None:
    report = gpu_check.Report()
    assert report.run("pixtral", "passes", lambda: "fine")
    assert not report.run("pixtral", "fails", lambda: (_ for _ in ()).throw(AssertionError("no")))
    assert not report.ok and report.rows[-1][2:5:2] == ("FAIL", "AssertionError: no")
    report.notes.append(gpu_check.UNPAGED_NOTE)
    assert report.table().endswith(f"note: {gpu_check.UNPAGED_NOTE}\nSOME CHECKS FAILED\n")
    assert "cannot see batching or prefix sharing" in gpu_check.UNPAGED_NOTE
