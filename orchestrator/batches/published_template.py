"""The chat template a queue's model renders with, published in Redis by `vlmq serve`.

A submitter of a batch file renders chat messages into prompts before it submits them (so a
bad conversation is a line error, at once), and needs the served model's template for that:
`vlmq serve` writes it into the queue's hash (`chat_template`, as `ChatTemplate.to_json`), and
`vlmq submit` reads it from there, needing no model directory of its own.
"""

from __future__ import annotations

import logging
from pathlib import Path

import redis

from orchestrator.batches.chat_template import ChatTemplate, ChatTemplateError
from orchestrator.redis_keys import RedisKeys

log = logging.getLogger(__name__)

FIELD = "chat_template"


def publish_chat_template(
    client: redis.Redis, namespace: str, queue: str, model_dir: Path
) -> ChatTemplate | None:
    """Publish the model's template for the queue; a model without one removes any older
    template (jobs then need raw prompts). The template published, if any."""
    key = RedisKeys(namespace).queue(queue).base
    try:
        template = ChatTemplate.from_model_dir(model_dir)
    except ChatTemplateError as error:
        log.warning("no chat template published for queue %s: %s", queue, error)
        client.hdel(key, FIELD)
        return None
    client.hset(key, FIELD, template.to_json())
    return template


def published_chat_template(client: redis.Redis, namespace: str, queue: str) -> ChatTemplate | None:
    """The queue's published template; None when no server of a model with one has started."""
    raw = client.hget(RedisKeys(namespace).queue(queue).base, FIELD)
    if raw is None:
        return None
    return ChatTemplate.from_json(raw.decode() if isinstance(raw, bytes) else str(raw))
