"""The exllamav2 engine on a real GPU, checked against the transformers engine on the same weights.

Run through `scripts/gpu-check` (which sets the CUDA architecture, installs what the checkout
carries and keeps the full log). For each tiny model family it writes the model, loads each side
of the exllamav2 engine as its actor would (the vision side: tower and projector only; the
language side: text model, cache and generator only), embeds three images (one tower run each),
generates a batch of requests that share images, and checks: layouts equal the transformers
engine's; the tower's rows match transformers'; every request finishes; a repeated image reuses
its placed embedding and hits exllamav2's prefix cache; a newer epoch drops the cached pages and
refuses the older epoch; first-token logits match transformers' (fp16 tolerance) and move when
the image changes. Then the vision and generator actors, built from an `EngineConfig` as the
pipeline builds them, embed and generate the same batch. Prints one table; exits 1 if any check
failed.

Without flash-attn >= 2.5.7 (the GPU machine has none) exllamav2 runs unpaged: one request at a
time, and a prefix is reused only from the request just before. The check then cannot see
batching or prefix sharing across requests; it says so in its table. The CPU tests cover both
modes against a scripted generator with exllamav2's rules.

The actors run in this process, as plain classes: Ray is not on the GPU machine (its wheel is
about 70 MB, over what the checkout can carry), and what Ray adds (processes, placement,
restarts) is tested with a local Ray on CPUs. What the GPU adds is checked here: each actor
loads its side on the GPU, the features it hands over are CPU float16 rows (what the object
store carries), and the generator actor's results come back through its async API.

`--dry-run` does everything up to the first CUDA use: config, tokenizer, settings against the
model, layouts, embeddings placed at their ranges, jobs, the actors' calls; the CPU tests run it
with exllamav2's pure-Python modules.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
import traceback
import types
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from PIL import Image

from worker.actors.generator import GenerationCall, GeneratorActor, GeneratorActorConfig
from worker.actors.vision import VisionActor, VisionActorConfig
from worker.encoding.prompt_encoder import PromptEncoder
from worker.engines import EngineConfig, EngineKind
from worker.engines.exllamav2.embeddings import EmbeddingCache, request_embeddings
from worker.engines.exllamav2.engine import start_exllamav2_language, start_exllamav2_vision
from worker.engines.exllamav2.jobs import make_job
from worker.engines.exllamav2.language import ExLlamaV2Language
from worker.engines.exllamav2.model import (
    ExLlamaV2Settings,
    ExLlamaV2Vlm,
    Part,
    load_exllamav2_vlm,
)
from worker.engines.exllamav2.vision import ExLlamaV2Vision
from worker.engines.transformers.language import TransformersStepModel
from worker.engines.transformers.model import TransformersVlm, load_transformers_vlm
from worker.engines.transformers.sequence import Sequence
from worker.engines.transformers.vision import TransformersVision
from worker.errors import StaleEpochError
from worker.generation import GenerationRequest, GenerationResult
from worker.sampling_params import SamplingParams
from worker.span import Span
from worker.tiny.model import TINY_MODEL_FAMILIES, TinyModelFamily, write_tiny_model
from worker.token_range import RESERVED_ID_BASE, TokenRange

# Sizes on which both engines' resize rules agree for both families; C is A's size, so it can
# stand in for A to show that the logits depend on the image.
IMAGES = {"A": (224, 224, 1), "B": (448, 224, 2), "C": (224, 224, 3)}
# One image per request but the last; image first, so repeats share a prompt prefix.
BATCH = ["A", "A", "B", "B", "C", "A", "C", "B", "AB"]
SETTINGS = ExLlamaV2Settings(cache_tokens=8192, max_batch_size=8, embedding_cache_bytes=2**26)
GREEDY = SamplingParams(max_new_tokens=8)
LOGITS_TOLERANCE = 0.03  # max |difference| / max |reference|, fp16 against fp32
ROWS_TOLERANCE = 0.03
WAIT_S = 180.0
UNPAGED_NOTE = (
    "exllamav2 runs unpaged here (no flash-attn >= 2.5.7): one request at a time, so this run "
    "cannot see batching or prefix sharing across requests (the CPU tests cover both modes)"
)


@dataclass
class Report:
    rows: list[tuple[str, str, str, float, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # printed under the table

    def run(self, family: str, name: str, check: Callable[[], str]) -> bool:
        """Run one check; it returns a detail, or raises (AssertionError: the check failed)."""
        started = time.perf_counter()
        try:
            detail, status = check(), "pass"
        except Exception as error:
            traceback.print_exc()  # the whole story (a compiler's output, say) goes to stderr
            detail, status = f"{type(error).__name__}: {str(error)[:300]}", "FAIL"
        self.rows.append((family, name, status, time.perf_counter() - started, detail))
        # As it happens too, so that a log cut short (a timeout) still says how far it got.
        print(f"gpu-check: {family} {name}: {status} ({self.rows[-1][3]:.1f} s) {detail}",
              file=sys.stderr, flush=True)
        return status == "pass"

    @property
    def ok(self) -> bool:
        return all(status == "pass" for _, _, status, _, _ in self.rows)

    def table(self) -> str:
        lines = [f"{'family':9} {'check':34} {'result':6} {'s':>6}  detail"]
        lines += [f"{family:9} {name:34} {status:6} {seconds:6.1f}  {detail}"
                  for family, name, status, seconds, detail in self.rows]
        lines += [f"note: {note}" for note in self.notes]
        lines.append("all checks passed" if self.ok else "SOME CHECKS FAILED")
        return "\n".join(lines) + "\n"

    def print(self) -> None:
        print("\n" + self.table(), end="")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="stop before the first CUDA use")
    parser.add_argument("--work-dir", type=Path, help="where the tiny models go (default: temp)")
    parser.add_argument(
        "--families", nargs="+", choices=TINY_MODEL_FAMILIES, default=list(TINY_MODEL_FAMILIES)
    )
    parser.add_argument("--table", type=Path, help="also write the table to this file")
    args = parser.parse_args(argv)
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="vlmq-gpu-check-"))
    report = Report()
    if args.dry_run:
        _stand_in_for_the_extension()
        report.notes.append("dry run: nothing ran on a GPU; paged or not is known only there")
    if args.dry_run or report.run("-", "exllamav2 extension", lambda: _import_extension(report)):
        for family in args.families:
            try:
                _check_family(family, work_dir / family, args.dry_run, report)
            except Exception as error:  # outside any one check: the family's remaining ones
                traceback.print_exc()
                report.rows.append((family, "(stopped)", "FAIL", 0.0, repr(error)[:300]))
    report.print()
    if args.table:
        args.table.write_text(report.table())
    return 0 if report.ok else 1


def _stand_in_for_the_extension() -> None:
    """Let exllamav2's pure-Python modules import without building its CUDA extension.

    `import exllamav2` compiles the extension unless a module of its name is importable; a dry
    run never calls it, so an empty module stands in (as in tests/support/exllamav2_cpu.py).
    """
    sys.modules.setdefault("exllamav2_ext", types.ModuleType("exllamav2_ext"))


def _import_extension(report: Report) -> str:
    assert torch.cuda.is_available(), "PyTorch sees no CUDA device"
    import exllamav2  # the first import builds the CUDA extension for TORCH_CUDA_ARCH_LIST
    from exllamav2 import attn

    paged = bool(attn.has_flash_attn_with_paged)
    if not paged:
        report.notes.append(UNPAGED_NOTE)
    return (
        f"exllamav2 {exllamav2.__version__}, torch {torch.__version__}, "
        f"{torch.cuda.get_device_name()}, "
        f"{'paged' if paged else 'unpaged (no flash-attn >= 2.5.7)'}"
    )


@dataclass
class _Sides:
    """What the family's checks run on, filled in by the loading checks."""

    vision: ExLlamaV2Vision | None = None
    vlm: ExLlamaV2Vlm | None = None  # the language side's model (its weights: on the GPU only)
    language: ExLlamaV2Language | None = None  # on the GPU only


def _check_family(family: str, model_dir: Path, dry_run: bool, report: Report) -> None:
    write_tiny_model(model_dir, cast(TinyModelFamily, family))
    sides = _Sides()
    if not report.run(family, "vision side: tower only",
                      lambda: _load_vision(model_dir, dry_run, sides)):
        return
    if not report.run(family, "language side: text model only",
                      lambda: _load_language(model_dir, dry_run, sides)):
        return
    assert sides.vision is not None and sides.vlm is not None
    vision, vlm = sides.vision, sides.vlm
    reference = load_transformers_vlm(model_dir)
    images = {name: _pattern(*spec) for name, spec in IMAGES.items()}
    spans = _spans(vision, images, epoch=1)
    expected_rows = {name: TransformersVision(reference).embed(image).rows
                     for name, image in images.items()}
    report.run(family, "layouts equal transformers'", lambda: _same_layouts(vision, reference))
    if dry_run:
        requests = _requests(family, spans, expected_rows)
        report.run(family, "placed embeddings, jobs (dry run)", lambda: _build_jobs(vlm, requests))
        report.run(family, "actor calls (dry run)", lambda: _actor_calls(requests))
        return
    assert sides.language is not None
    language = sides.language
    rows: dict[str, torch.Tensor] = {}
    embedded = report.run(family, "vision rows match transformers'",
                          lambda: _embed(vision, images, expected_rows, rows))
    if not embedded:
        language.close()
        return
    requests = _requests(family, spans, rows)
    try:
        if report.run(family, "batch generation", lambda: _generate(language, requests)):
            report.run(family, "repeated image reuses embedding", lambda: _reuse(language))
            report.run(family, "repeated image hits prefix cache",
                       lambda: _prefix_hits(language, requests))
        report.run(family, "newer epoch drops cached pages", lambda: _epoch(language, requests[0]))
    finally:
        language.close()
    report.run(family, "first-token logits vs transformers",
               lambda: _logits(language, reference, requests, rows))
    report.run(family, "vision and generator actors",
               lambda: _actors(model_dir, images, requests, expected_rows))


def _load_vision(model_dir: Path, dry_run: bool, sides: _Sides) -> str:
    threads = _engine_threads()
    if dry_run:
        vlm = load_exllamav2_vlm(model_dir, SETTINGS, parts=Part.VISION, load_weights=False)
        sides.vision = ExLlamaV2Vision(vlm)
    else:
        before = torch.cuda.memory_allocated()
        sides.vision = start_exllamav2_vision(model_dir, SETTINGS)
        vlm = sides.vision.vlm
    assert vlm.model is None and vlm.cache is None, "the vision side built a text model"
    assert vlm.vision_tower is not None, "the vision side has no vision tower"
    assert _engine_threads() == threads, "the vision side started an engine thread"
    if dry_run:
        return f"{vlm.config.architecture}: config, tokenizer, tower (no weights)"
    return (f"{vlm.config.architecture}: tower and projector, "
            f"{_mib(torch.cuda.memory_allocated() - before)} on the GPU; no cache, no thread")


def _load_language(model_dir: Path, dry_run: bool, sides: _Sides) -> str:
    if dry_run:  # the settings are checked against the model's context all the same
        sides.vlm = load_exllamav2_vlm(
            model_dir, SETTINGS, parts=Part.LANGUAGE, load_weights=False
        )
        assert sides.vlm.vision_tower is None, "the language side built a vision tower"
        return f"hidden size {sides.vlm.hidden_size}; settings fit the model (no weights)"
    before = torch.cuda.memory_allocated()
    sides.language = start_exllamav2_language(model_dir, SETTINGS)
    sides.vlm = sides.language.vlm
    assert sides.vlm.vision_tower is None, "the language side built a vision tower"
    return (f"text model, {SETTINGS.cache_tokens}-token cache, generator: "
            f"{_mib(torch.cuda.memory_allocated() - before)} on the GPU")


def _engine_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("vlmq-")}


def _mib(num_bytes: int) -> str:
    return f"{num_bytes / 2**20:.1f} MiB"


def _pattern(width: int, height: int, seed: int) -> Image.Image:
    """An image with structure, so that different seeds embed differently."""
    y, x = np.mgrid[0:height, 0:width]
    channels = [(x * seed) % 256, (y * (seed + 3)) % 256, ((x + y) * 7 * seed) % 256]
    return Image.fromarray(np.stack(channels, axis=-1).astype(np.uint8), "RGB")


def _spans(vision: ExLlamaV2Vision, images: dict[str, Image.Image], epoch: int) -> dict[str, Span]:
    """A range per image, carved as the allocator would: same image, same range."""
    spans, first = {}, RESERVED_ID_BASE
    for name, image in images.items():
        layout = vision.layout_for(image.width, image.height)
        spans[name] = Span(f"<img:{name}>", TokenRange(epoch, first, layout.num_rows), layout)
        first += layout.num_rows
    return spans


def _requests(
    family: str, spans: dict[str, Span], rows: dict[str, torch.Tensor]
) -> list[GenerationRequest]:
    requests = []
    for index, names in enumerate(BATCH):
        chosen = [spans[name] for name in names]
        prompt = "".join(span.alias for span in chosen) + f" Question {index}: what is shown?"
        requests.append(GenerationRequest(
            request_id=f"{family}-{index}-{names}",
            prompt=prompt,
            spans=tuple(chosen),
            features=tuple(rows[name].to(torch.float16) for name in names),
            sampling=GREEDY,
        ))
    return requests


def _same_layouts(vision: ExLlamaV2Vision, reference: TransformersVlm) -> str:
    reference_vision = TransformersVision(reference)
    for name, (width, height, _) in IMAGES.items():
        ours, theirs = vision.layout_for(width, height), reference_vision.layout_for(width, height)
        assert ours == theirs, f"image {name}: {ours} != {theirs}"
    return ", ".join(f"{n}: {vision.layout_for(w, h).num_rows} rows"
                     for n, (w, h, _) in IMAGES.items())


def _build_jobs(vlm: ExLlamaV2Vlm, requests: list[GenerationRequest]) -> str:
    from exllamav2.generator.dynamic_embeddings import global_allocator

    counter = global_allocator.next_token_index
    encoder, cache = PromptEncoder(vlm.text_tokenizer), EmbeddingCache(2**26)
    num_tokens = 0
    for request in requests:
        embeddings = request_embeddings(
            request.spans, request.features, vlm.model, vlm.embed_tokens, cache
        )
        for add_bos in (True, False):  # equal to exllamav2's encode for the same add_bos
            ours = encoder.encode(request.prompt, request.spans, add_bos=add_bos)
            theirs = vlm.tokenizer.encode(
                request.prompt, add_bos=add_bos, encode_special_tokens=True,
                embeddings=embeddings,
            )[0].tolist()
            assert ours == theirs, (
                f"{request.request_id}: our IDs differ from exllamav2's encode, add_bos={add_bos}"
            )
        ids = encoder.encode(request.prompt, request.spans, add_bos=request.add_bos)
        make_job(request, ids, embeddings, vlm.eos_token_ids)
        num_tokens += len(ids)
    assert global_allocator.next_token_index == counter, "exllamav2's global counter moved"
    uses = sum(len(names) for names in BATCH)
    assert (cache.num_misses, cache.num_hits) == (len(IMAGES), uses - len(IMAGES))
    return f"{len(requests)} jobs, {num_tokens} prompt tokens, IDs equal exllamav2's encode"


def _calls(requests: list[GenerationRequest]) -> list[GenerationCall]:
    """The requests as the pipeline hands them to a generator actor: features travel beside."""
    return [
        GenerationCall(request_id=r.request_id, prompt=r.prompt, spans=r.spans,
                       sampling=r.sampling, add_bos=r.add_bos)
        for r in requests
    ]


def _actor_calls(requests: list[GenerationRequest]) -> str:
    calls = _calls(requests)
    assert [c.spans for c in calls] == [r.spans for r in requests]
    return f"{len(calls)} generator calls, {sum(len(c.spans) for c in calls)} features beside"


def _actors(
    model_dir: Path,
    images: dict[str, Image.Image],
    requests: list[GenerationRequest],
    expected_rows: dict[str, torch.Tensor],
    kind: EngineKind = EngineKind.EXLLAMAV2,  # the CPU tests run the same calls on transformers
) -> str:
    """The actors as the pipeline builds them (an EngineConfig each), in this process."""
    engine = EngineConfig(str(model_dir), kind, max_batch_size=8)
    threads = _engine_threads()
    vision = VisionActor(VisionActorConfig("gpu-check-vision", engine))
    assert _engine_threads() == threads, "the vision actor started an engine thread"
    features, worst = {}, 0.0
    for name, image in images.items():
        features[name], num_rows = vision.embed(image)
        rows = features[name].rows
        assert (rows.device.type, rows.dtype) == ("cpu", torch.float16), "not object-store rows"
        assert num_rows == features[name].layout.num_image_rows
        worst = max(worst, _relative_error(rows, expected_rows[name]))
    assert worst <= ROWS_TOLERANCE, f"vision actor: relative error {worst:.4f}"
    generator = GeneratorActor(GeneratorActorConfig("gpu-check-generator", engine))
    started = time.perf_counter()
    results = asyncio.run(_generate_through(generator, requests, features))
    seconds = time.perf_counter() - started
    assert all(r.num_completion_tokens or r.finish_reason == "eos" for r in results)
    assert [r.request_id for r in results] == [r.request_id for r in requests]
    stats = generator.stats()
    assert (stats.num_completed, stats.num_failed) == (len(requests), 0), stats
    tokens = sum(r.num_completion_tokens for r in results)
    return (
        f"vision: {len(images)} images, relative error {worst:.4f}; generator: "
        f"{len(results)} requests, {tokens} tokens in {seconds:.2f} s, "
        f"at most {stats.max_active} in flight"
    )


async def _generate_through(
    actor: GeneratorActor, requests: list[GenerationRequest], features: dict[str, Any]
) -> list[GenerationResult]:
    """Every call at once, as the router sends them; the engine batches what it can."""
    calls = _calls(requests)
    return list(await asyncio.gather(*[
        actor.generate(call, *[features[name] for name in names])
        for call, names in zip(calls, BATCH, strict=True)
    ]))


def _embed(
    vision: ExLlamaV2Vision,
    images: dict[str, Image.Image],
    expected: dict[str, torch.Tensor],
    rows: dict[str, torch.Tensor],
) -> str:
    worst = 0.0
    for name, image in images.items():
        features = vision.embed(image)
        rows[name] = features.rows
        worst = max(worst, _relative_error(features.rows, expected[name]))
    assert worst <= ROWS_TOLERANCE, f"relative error {worst:.4f} > {ROWS_TOLERANCE}"
    return f"max relative error {worst:.4f}"


def _generate(language: ExLlamaV2Language, requests: list[GenerationRequest]) -> str:
    started = time.perf_counter()
    futures = [language.submit(r) for r in requests]
    # Read off exllamav2's own batch (active_jobs) while they run: what the generator actor
    # exports as vlmq_num_requests_running and _waiting.
    seen = language.load
    results = [f.result(WAIT_S) for f in futures]
    seconds = time.perf_counter() - started
    assert seen.running + seen.waiting <= len(requests), f"load {seen} of {len(requests)}"
    left = language.load
    assert (left.running, left.waiting) == (0, 0), f"left: {left}"
    tokens = sum(r.num_completion_tokens for r in results)
    assert all(r.num_completion_tokens or r.finish_reason == "eos" for r in results)
    reasons = sorted({r.finish_reason.value for r in results})
    return (f"{len(results)} requests, {tokens} tokens in {seconds:.2f} s, finish: {reasons}; "
            f"load while running: {seen.running} in the batch, {seen.waiting} waiting")


def _reuse(language: ExLlamaV2Language) -> str:
    cache = language.embedding_cache
    uses = sum(len(names) for names in BATCH)
    placed = (cache.num_misses, cache.num_hits)
    assert placed == (len(IMAGES), uses - len(IMAGES)), f"placed, reused: {placed}"
    return f"{cache.num_misses} placed, {cache.num_hits} reused"


def _prefix_hits(language: ExLlamaV2Language, requests: list[GenerationRequest]) -> str:
    """Paged: every repeat of a first image hits. Unpaged (one page, one request at a time):
    only a request whose predecessor began with the same image. A hit is more than the BOS,
    which unpaged mode reuses from any predecessor."""
    paged = getattr(language.generator, "paged", True)
    cached = {f.result.request_id: f.num_cached_tokens for f in language.recent_finished()}
    firsts = [names[0] for names in BATCH]
    expected = [
        first in (firsts[:index] if paged else firsts[max(index - 1, 0) : index])
        for index, first in enumerate(firsts)
    ]
    hits = [cached[r.request_id] > 1 for r in requests]
    assert hits == expected, f"cached tokens {[cached[r.request_id] for r in requests]}"
    return f"{'paged' if paged else 'unpaged'}; cached tokens per request " + str(
        [cached[r.request_id] for r in requests]
    )


def _epoch(language: ExLlamaV2Language, request: GenerationRequest) -> str:
    resets = language.num_page_table_resets
    again = language.submit(replace(request, request_id="again")).result(WAIT_S)
    newer = replace(request, request_id="newer", spans=tuple(
        replace(s, token_range=replace(s.token_range, epoch=2)) for s in request.spans
    ))
    language.submit(newer).result(WAIT_S)
    cached = {f.result.request_id: f.num_cached_tokens for f in language.recent_finished()}
    assert cached["again"] > 1, "the same prompt again did not hit the prefix cache"
    # What the generator actor counts into vlmq_prefix_cache_hits_total.
    assert again.num_cached_tokens == cached["again"], "the result's cached tokens differ"
    assert cached["newer"] <= 1, f"newer epoch reused {cached['newer']} cached tokens"
    assert language.num_page_table_resets == resets + 1
    stale = language.submit(replace(request, request_id="stale"))
    assert isinstance(stale.exception(WAIT_S), StaleEpochError), "older epoch was not refused"
    return (
        f"same epoch: {cached['again']} of {again.num_prompt_tokens} prompt tokens cached; "
        f"newer epoch: {cached['newer']}"
    )


def _logits(
    language: ExLlamaV2Language,
    reference: TransformersVlm,
    requests: list[GenerationRequest],
    rows: dict[str, torch.Tensor],
) -> str:
    """Both engines fed the same image rows; then transformers fed C's rows where A's were."""
    vocab = reference.vocab_size  # exllamav2 pads its logits beyond the tokenizer's vocabulary
    one_token = SamplingParams(max_new_tokens=1)
    details, ours_for_a = [], None
    for request in (requests[0], requests[-1]):
        probe = replace(request, sampling=one_token)
        ours = _first_token_logits(language, probe)[:vocab]
        error = _relative_error(ours, _reference_logits(reference, probe)[:vocab])
        assert error <= LOGITS_TOLERANCE, f"{request.request_id}: relative error {error:.4f}"
        details.append(f"{request.request_id} {error:.4f}")
        ours_for_a = ours if ours_for_a is None else ours_for_a
    assert ours_for_a is not None
    image_c = replace(requests[0], features=(rows["C"],), sampling=one_token)
    control = _relative_error(ours_for_a, _reference_logits(reference, image_c)[:vocab])
    assert control > LOGITS_TOLERANCE, f"image C's logits are A's ({control:.4f})"
    return "relative error " + ", ".join(details) + f"; transformers with image C: {control:.4f}"


def _first_token_logits(language: ExLlamaV2Language, request: GenerationRequest) -> torch.Tensor:
    """Driven from this thread: the engine is closed, its generator idle."""
    ids, embeddings = language.prepare(request)
    job = make_job(request, ids, embeddings, language.vlm.eos_token_ids, return_logits=True)
    generator: Any = language.generator
    generator.enqueue(job)
    logits = None
    while generator.num_remaining_jobs():
        for result in generator.iterate():
            if result["eos"]:  # the first token ended it: its logits were held back
                logits = result.get("logits", result.get("held", {}).get("logits"))
    assert isinstance(logits, torch.Tensor), "exllamav2 returned no logits"
    return logits[0, 0].float()  # logits: [1, 1, padded vocab]


def _reference_logits(reference: TransformersVlm, request: GenerationRequest) -> torch.Tensor:
    model = TransformersStepModel(reference)
    logits, _ = model.prompt_logits(Sequence(request, Future(), model.decode_text))
    return logits[-1]


def _relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    ours, theirs = ours.float(), theirs.float()
    finite = torch.isfinite(theirs)
    assert torch.equal(finite, torch.isfinite(ours)), "the two mask different entries"
    scale = theirs[finite].abs().max().item()
    return float((ours[finite] - theirs[finite]).abs().max().item() / max(scale, 1e-6))


if __name__ == "__main__":
    sys.exit(main())
