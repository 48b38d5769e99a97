"""exllamav2's pure-Python tokenizer and embedding containers, as a reference on a CPU machine.

exllamav2 imports its compiled CUDA extension when the package is imported, though nothing used
here calls it. Tests put a placeholder module under the extension's name first, so the import
succeeds without CUDA; product code never imports exllamav2 this way.
"""

from __future__ import annotations

import json
import sys
import time
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

__all__ = [
    "ExLlamaV2Config",
    "ExLlamaV2MMEmbedding",
    "ExLlamaV2Tokenizer",
    "ScriptedGenerator",
    "exllamav2_embeddings",
    "exllamav2_encode",
    "exllamav2_tokenizer",
    "read",
]

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
            pre_tokens=span.row_layout.num_pre_tokens,
            post_tokens=span.row_layout.num_post_tokens,
        )
        # Only the range matters to the tokenizer; the engine places its embeddings at the
        # allocator's ranges without moving exllamav2's global counter
        # (worker/engines/exllamav2/embeddings.py).
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


class ScriptedGenerator:
    """A stand-in for `ExLlamaV2DynamicGenerator` at the engine's seam (`GeneratorSeam`).

    It takes real `ExLlamaV2DynamicJob`s and runs them without a model: each completion is
    scripted by request ID, and the result dicts carry the stages and keys of exllamav2 0.3.2's
    `iterate()` (generator/dynamic.py: `iterate_start_jobs`, `prefill`, `receive_sample.emit`).
    Its prefix cache reports the prompt tokens a job shares with any prompt prefilled since the
    last page-table reset, as exllamav2's pages (hashed by token IDs) would reuse them; unpaged,
    with the previous job's only, one job running at a time, as exllamav2 does without
    flash-attn.
    """

    page_size = 256

    def __init__(
        self,
        tokenizer: Any,
        completions: dict[str, list[int]],
        max_batch_size: int = 4,
        max_seq_len: int = 4096,
        paged: bool = True,
    ) -> None:
        self.paged = paged
        self.max_seq_len = max_seq_len
        self.max_pages = max_seq_len // self.page_size
        self.max_batch_size = max_batch_size if paged else 1
        self.completions = completions
        self.pieces = tokenizer.get_id_to_piece_list(False)
        self.pending_jobs: list[Any] = []
        self.active_jobs: list[Any] = []
        self.jobs: list[Any] = []  # every job enqueued, in order
        self.events: list[str] = []  # "start <id>", "finish <id>", "cancel <id>", "reset"
        self.fail_next_iterate = False
        self._prefilled: list[list[int]] = []
        self._state: dict[int, dict[str, Any]] = {}
        self._next_serial = 0

    def enqueue(self, job: Any) -> int:
        job.serial_number, self._next_serial = self._next_serial, self._next_serial + 1
        job.time_enqueue = time.time()
        self.pending_jobs.append(job)
        self.jobs.append(job)
        return int(job.serial_number)

    def num_remaining_jobs(self) -> int:
        return len(self.pending_jobs) + len(self.active_jobs)

    def reset_page_table(self) -> None:
        assert not self.num_remaining_jobs(), "a reset under running jobs corrupts their pages"
        self._prefilled.clear()
        self.events.append("reset")

    def cancel(self, job: Any) -> None:
        # As exllamav2's: a pending job leaves the queue, an active one the batch (its pages).
        if job in self.pending_jobs:
            self.pending_jobs.remove(job)
        elif job in self.active_jobs:
            self.active_jobs.remove(job)
            self._state.pop(job.serial_number, None)
        self.events.append(f"cancel {job.identifier}")

    def clear_queue(self) -> None:
        self.pending_jobs.clear()
        self.active_jobs.clear()

    def iterate(self) -> list[dict[str, Any]]:
        if self.fail_next_iterate:
            self.fail_next_iterate = False
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        results: list[dict[str, Any]] = []
        while self.pending_jobs and len(self.active_jobs) < self.max_batch_size:
            job = self.pending_jobs.pop(0)
            self.active_jobs.append(job)
            self.events.append(f"start {job.identifier}")
            results.append(self._result(job, "started"))
        for job in self.active_jobs:
            if job.serial_number not in self._state:
                self._prefill(job, results)
        for job in list(self.active_jobs):
            self._sample(job, results)
        return results

    def _result(self, job: Any, stage: str, eos: bool = False) -> dict[str, Any]:
        result = {"job": job, "stage": stage, "eos": eos, "serial": job.serial_number}
        if job.identifier is not None:
            result["identifier"] = job.identifier
        return result

    def _prefill(self, job: Any, results: list[dict[str, Any]]) -> None:
        ids = job.sequences[0].input_ids.torch()[0].tolist()
        if self.paged:
            cached = max((_common_prefix(ids[:-1], p) for p in self._prefilled), default=0)
            cached = cached if cached > 1 else 0  # a partial page is copied only past 1 token
        else:
            cached = _common_prefix(ids[:-1], self._prefilled[-1]) if self._prefilled else 0
        self._prefilled.append(ids[:-1])
        job.time_first_prefill = time.time()
        self._state[job.serial_number] = {
            "prompt": len(ids), "cached": cached, "new_tokens": 0, "full": "",
            "held_text": "", "held_ids": [], "first_token_at": None,
        }
        result = self._result(job, "prefill")
        result.update({"curr_progress": len(ids) - 1, "max_progress": len(ids) - 1})
        results.append(result)

    def _sample(self, job: Any, results: list[dict[str, Any]]) -> None:
        state = self._state[job.serial_number]
        state["first_token_at"] = state["first_token_at"] or time.time()
        script = self.completions[job.identifier]
        token = script[min(state["new_tokens"], len(script) - 1)]
        state["new_tokens"] += 1
        state["held_text"] += self.pieces[token]
        state["held_ids"].append(token)
        if token in job.stop_tokens:
            held = {"token_ids": torch.tensor([state["held_ids"]])}
            if state["held_text"]:
                held["text"] = state["held_text"]
            self._finish(job, results, {}, "stop_token", held=held, eos_token=token)
            return
        if state["new_tokens"] >= job.max_new_tokens:
            self._finish(job, results, self._emit_held(state), "max_new_tokens")
            return
        text = state["held_text"]
        found = [i for s in job.stop_strings if (i := text.find(s)) >= 0]
        if found:
            stop = text[min(found):]
            state["held_text"] = text[: min(found)]
            string = next(s for s in job.stop_strings if stop.startswith(s))
            self._finish(job, results, self._emit_held(state), "stop_string", string=string)
            return
        if any(s.startswith(text[-k:]) for s in job.stop_strings for k in range(1, len(text) + 1)):
            results.append(self._result(job, "streaming"))  # held back: may begin a stop string
            return
        result = self._result(job, "streaming")
        result.update(self._emit_held(state))
        results.append(result)

    def _emit_held(self, state: dict[str, Any]) -> dict[str, Any]:
        emitted: dict[str, Any] = {}
        if state["held_text"]:
            emitted["text"] = state["held_text"]
            state["full"] += state["held_text"]
        if state["held_ids"]:
            emitted["token_ids"] = torch.tensor([state["held_ids"]])
        state["held_text"], state["held_ids"] = "", []
        return emitted

    def _finish(
        self,
        job: Any,
        results: list[dict[str, Any]],
        emitted: dict[str, Any],
        reason: str,
        *,
        held: dict[str, Any] | None = None,
        eos_token: int | None = None,
        string: str | None = None,
    ) -> None:
        state = self._state[job.serial_number]
        now = time.time()
        result = self._result(job, "streaming", eos=True)
        result["eos_reason"] = reason
        if eos_token is not None:
            result["eos_triggering_token_id"] = eos_token
            result["eos_triggering_token_str"] = self.pieces[eos_token]
        if string is not None:
            result["eos_triggering_string"] = string
        result.update(emitted)
        result.update({
            "full_completion": state["full"],
            "new_tokens": state["new_tokens"],
            "prompt_tokens": state["prompt"],
            "time_enqueued": job.time_first_prefill - job.time_enqueue,
            "time_prefill": state["first_token_at"] - job.time_first_prefill,
            "time_generate": now - state["first_token_at"],
            "cached_pages": state["cached"] // self.page_size,
            "cached_tokens": state["cached"],
        })
        if held:
            result["held"] = held
        results.append(result)
        self.active_jobs.remove(job)
        self.events.append(f"finish {job.identifier}")


def _common_prefix(a: list[int], b: list[int]) -> int:
    count = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        count += 1
    return count
