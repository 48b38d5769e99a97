"""The limits of one job, shared by the pipeline and the queue's schema.

Torch-free and import-free on purpose: the queue's client checks jobs against these before
anything heavy is loaded.
"""

from __future__ import annotations

# Where an image goes in a job's prompt: one placeholder per image, in order.
IMAGE_PLACEHOLDER = "<image>"

# The longest context of the families vlmq serves is Pixtral 12B's 128k tokens (Qwen2-VL: 32k);
# text averages about 4 bytes of UTF-8 a token (English; fewer for CJK, about as many for
# code). At 8 bytes a token a prompt of 1 MiB already fills 128k, so nothing longer can be
# served, and refusing it here spares a generator tokenizing it on its engine thread (about
# 0.6 s a MiB with the tiny model on the CPU test machine) only to refuse it.
MAX_PROMPT_BYTES = 1 << 20
# Job IDs travel in logs, outcomes and queue keys: a name, not a payload.
MAX_JOB_ID_BYTES = 256

# The defaults of worker.images.ImageLimits (max_images, max_bytes), repeated here because
# that module loads Pillow; a test keeps the two equal.
MAX_IMAGES = 16
MAX_IMAGE_BYTES = 20 * 1024 * 1024
