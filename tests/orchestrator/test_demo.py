"""`vlmq demo`, the README's main job, run as a user runs it, and the sample batch it runs."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter

import pytest

from orchestrator.demo import CORRUPT_IMAGE, GOOD_IMAGES, SAMPLE_DIR, sample_batch
from orchestrator.pipeline.job import IMAGE_PLACEHOLDER
from worker.errors import CorruptImageError
from worker.images.decoding import ImageLimits, decode_image, sniff_format


def run_vlmq(*args: str) -> subprocess.CompletedProcess[str]:
    # A process of its own: the demo starts and stops its own Ray and redis-server.
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_demo_runs_the_sample_batch_through_redis_and_serve() -> None:
    done = run_vlmq("demo")
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert out.startswith(
        "vlmq demo: 24 jobs through Redis; 1 vision + 2 generator actors on 2 logical GPUs"
    )
    job_lines = re.findall(r"^  (?!progress)(\S+) +(\S+) +(.*)$", out.split("\n\n")[0],
                           re.MULTILINE)
    outcome_of = {job_id: (outcome, rest) for job_id, outcome, rest in job_lines}
    assert len(job_lines) == len(outcome_of) == 24  # one line per job
    # The client refuses the placeholder mismatch before sending it; the corrupt image fails
    # alone on the server, with its typed error.
    outcome, message = outcome_of.pop("mismatch")
    assert (outcome, message.split(":")[0]) == ("refused", "InvalidPayloadError")
    assert outcome_of.pop("corrupt") == (
        "failed",
        "CorruptImageError: the JPEG image could not be decoded (Truncated File Read)",
    )
    assert sorted(outcome_of) == [f"q{i:02d}" for i in range(22)]
    for outcome, rest in outcome_of.values():
        assert outcome in ("length", "eos", "stop_string")
        assert re.fullmatch(r"\d+ prompt \+ +\d+ new tokens", rest)
    assert re.search(r"^  progress: \d+/23 done \(", out, re.MULTILINE)
    assert re.search(
        r"^states: 22 succeeded \(.+\), 1 failed \(CorruptImageError 1\), 0 cancelled, "
        r"0 dead; 1 refused at submit \(InvalidPayloadError 1\)$",
        out,
        re.MULTILINE,
    )
    # Each distinct good image goes through the vision tower once; the corrupt one never does.
    assert re.search(
        r"^vision calls: 4 for 4 distinct good images \(\d+ reuses\)$", out, re.MULTILINE
    )
    assert re.search(
        r"^throughput: 23 jobs through Redis in [\d.]+s = [\d.]+ jobs/s; \d+ new tokens = "
        r"\d+ tokens/s$",
        out,
        re.MULTILINE,
    )
    actors = re.findall(
        r"^  (demo-\S+) +GPU ([01]) +(\d+) calls done, 0 failed$", out, re.MULTILINE
    )
    assert sorted(name for name, _, _ in actors) == [
        "demo-generator-0", "demo-generator-1", "demo-vision-0"
    ]
    done_by = {name: int(calls) for name, _, calls in actors}
    assert done_by["demo-vision-0"] == 4
    assert done_by["demo-generator-0"] + done_by["demo-generator-1"] == 22


def test_sample_batch_shares_images_and_carries_two_bad_jobs() -> None:
    batch = sample_batch()
    assert len(batch) == 24
    assert len({job.job_id for job in batch}) == 24
    uses = Counter(image for job in batch for image in job.images)
    good = {(SAMPLE_DIR / name).read_bytes() for name in GOOD_IMAGES}
    assert set(uses) == good | {(SAMPLE_DIR / CORRUPT_IMAGE).read_bytes()}
    assert all(uses[image] >= 5 for image in good)  # every good image is shared
    mismatched = [j for j in batch if j.prompt.count(IMAGE_PLACEHOLDER) != len(j.images)]
    assert [job.job_id for job in mismatched] == ["mismatch"]


def test_sample_images_are_small_varied_and_one_is_corrupt() -> None:
    files = sorted(SAMPLE_DIR.iterdir())
    assert sorted(f.name for f in files) == sorted((*GOOD_IMAGES, CORRUPT_IMAGE))
    assert sum(f.stat().st_size for f in files) < 60_000
    sizes = set()
    for name in GOOD_IMAGES:
        data = (SAMPLE_DIR / name).read_bytes()
        sizes.add(decode_image(data, ImageLimits()).size)
    assert len(sizes) == len(GOOD_IMAGES)  # different sizes and aspect ratios
    formats = {sniff_format((SAMPLE_DIR / name).read_bytes()) for name in GOOD_IMAGES}
    assert formats == {"PNG", "JPEG", "WEBP", "GIF"}
    with pytest.raises(CorruptImageError):
        decode_image((SAMPLE_DIR / CORRUPT_IMAGE).read_bytes(), ImageLimits())


def test_unknown_command_is_refused() -> None:
    done = run_vlmq("frobnicate")
    assert done.returncode == 2
    assert "No such command 'frobnicate'" in done.stderr
