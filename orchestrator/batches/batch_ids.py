"""The names of a batch file's batch and of its lines' jobs, derived so a resubmission finds them.

A batch is named by its input file's content and the queue it goes to: submitting the same
file again (after the submitter or the cluster crashed) names the same batch, and each line's
job is named by the batch and the line's `custom_id`, so a line already accepted is known by
its job ID.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

# custom_ids spelled only with these characters go into the job ID as they are (readable in
# `vlmq status --job`); any other is hashed, after a `~` no readable one can contain.
_READABLE_CUSTOM_ID = re.compile(r"[A-Za-z0-9_.:@+=-]{1,128}")
_READ_CHUNK = 1 << 20


def file_fingerprint(path: Path) -> str:
    """SHA-256 of the file's bytes, hex."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def batch_id_for(fingerprint: str, queue: str) -> str:
    """`batch_` and 24 hex digits: the same file on the same queue is the same batch."""
    name = hashlib.sha256(f"vlmq-batch-v1\0{queue}\0{fingerprint}".encode()).hexdigest()
    return f"batch_{name[:24]}"


def job_id_for(batch_id: str, custom_id: str) -> str:
    """The job of one line: `<batch>/<custom_id>`, or `<batch>/~<hash>` for a custom_id that
    could not name a key as it is (spaces, control characters, over 128 characters)."""
    if _READABLE_CUSTOM_ID.fullmatch(custom_id):
        return f"{batch_id}/{custom_id}"
    digest = hashlib.sha256(custom_id.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{batch_id}/~{digest[:40]}"
