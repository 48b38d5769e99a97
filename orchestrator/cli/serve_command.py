"""`vlmq serve`: one queue, one model, until SIGTERM or SIGINT (then it drains)."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from orchestrator.cli.options import namespace_option, queue_option, redis_options
from orchestrator.redis_connection import RedisSettings

_POSITIVE = click.IntRange(min=1)
_SHARE = click.FloatRange(min=0, min_open=True)


@click.command(short_help="serve one queue with one model on Ray")
@click.option("--model", required=True, metavar="DIR",
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="the model's directory (Hugging Face layout)")
@queue_option
@namespace_option
@click.option("--engine", type=click.Choice(["transformers", "exllamav2"]),
              default="transformers", show_default=True,
              help="transformers (CPU or GPU) or exllamav2 (GPU)")
@click.option("--ray-address", metavar="ADDRESS",
              help="join this Ray cluster (default: start a local one)")
@click.option("--num-gpus", type=click.IntRange(min=0), metavar="N",
              help="GPUs of the local Ray (logical ones where there are none)")
@click.option("--vision-actors", type=_POSITIVE, default=1, show_default=True, metavar="N")
@click.option("--generator-actors", type=_POSITIVE, default=1, show_default=True, metavar="N")
@click.option("--gpus-per-actor", type=_SHARE, default=0.5, show_default=True, metavar="F",
              help="GPU share of each vision and generator actor")
@click.option("--gpus-per-vision-actor", type=_SHARE, metavar="F",
              help="GPU share of each vision actor, where it differs (default: --gpus-per-actor)")
@click.option("--vision-resource", "vision_resources", multiple=True, metavar="NAME=AMOUNT",
              callback=lambda _ctx, _param, given: _vision_resources(given),
              help="a custom Ray resource each vision actor holds, e.g. vision_gpu=1, so only "
                   "nodes that offer it (a GPU group of their own) run them; repeat for more")
@click.option("--vision-node-label", "vision_labels", multiple=True, metavar="KEY=VALUE",
              callback=lambda _ctx, _param, given: _pairs(given, "--vision-node-label"),
              help="a Ray node label vision actors must run on (Ray's label_selector), "
                   "e.g. vlmq/pool=vision; repeat for more")
@click.option("--max-batch-size", type=_POSITIVE, default=8, show_default=True, metavar="N",
              help="requests one generator decodes at once")
@click.option("--lease-s", type=_SHARE, default=30.0, show_default=True, metavar="S",
              help="how long a claim holds a job without a renewal")
@click.option("--drain-grace-s", type=click.FloatRange(min=0), default=30.0,
              show_default=True, metavar="S",
              help="on SIGTERM, how long in-flight jobs may finish")
@click.option("--max-backlog", type=_POSITIVE, default=100_000, show_default=True, metavar="N",
              help="unfinished jobs the queue accepts")
@click.option("--image-root", metavar="DIR",
              type=click.Path(exists=True, file_okay=False, resolve_path=True),
              help="jobs may name image files under DIR (no .., no symlink out); default: none")
@click.option("--allow-url-host", "url_hosts", multiple=True, metavar="HOST[:PORT]",
              help="fetch image URLs from this host only (repeat it; *.example.com for "
                   "subdomains); default: any host with a public address")
@click.option("--no-image-urls", is_flag=True, help="refuse every image URL")
@click.option("--allow-loopback-images", is_flag=True,
              help="let image URLs reach this machine's loopback addresses (tests, sidecars)")
@click.option("--allow-private-network-images", is_flag=True,
              help="let image URLs reach private networks (10/8, 172.16/12, 192.168/16, fc00::/7); "
                   "cloud metadata addresses stay refused")
@click.option("--https-images-only", is_flag=True, help="refuse plain http image URLs")
@click.option("--image-fetch-timeout", type=_SHARE, default=10.0, show_default=True,
              metavar="S", help="to connect to an image URL's host, and for each read")
@click.option("--gpus-may-join", is_flag=True,
              help="actors may wait for GPUs the cluster does not have yet (an autoscaling "
                   "cluster adds the nodes); without it an unplaceable pool fails at once")
@click.option("--autoscale", is_flag=True,
              help="scale the pools on the queue's backlog, between the --min/--max bounds "
                   "(--vision-actors and --generator-actors are then the starting sizes)")
@click.option("--min-generators", type=_POSITIVE, default=1, show_default=True, metavar="N")
@click.option("--max-generators", type=_POSITIVE, default=4, show_default=True, metavar="N")
@click.option("--min-vision", type=_POSITIVE, default=1, show_default=True, metavar="N")
@click.option("--max-vision", type=_POSITIVE, default=2, show_default=True, metavar="N")
@click.option("--scale-down-idle-s", type=click.FloatRange(min=0), default=300.0,
              show_default=True, metavar="S",
              help="with --autoscale: shrink only after the work asked for fewer actors this long")
@click.option("--max-queue-wait-s", type=_SHARE, default=60.0, show_default=True, metavar="S",
              help="with --autoscale: a queued job older than this adds a generator")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", show_default=True,
              help="what vlmq logs on stderr (scaling decisions and expired batches at info)")
@redis_options
def serve(
    *,
    redis_settings: RedisSettings,
    model: Path,
    queue: str,
    namespace: str,
    engine: str,
    ray_address: str | None,
    num_gpus: int | None,
    vision_actors: int,
    generator_actors: int,
    gpus_per_actor: float,
    gpus_per_vision_actor: float | None,
    vision_resources: dict[str, float],
    vision_labels: dict[str, str],
    max_batch_size: int,
    lease_s: float,
    drain_grace_s: float,
    max_backlog: int,
    image_root: str | None,
    url_hosts: tuple[str, ...],
    no_image_urls: bool,
    allow_loopback_images: bool,
    allow_private_network_images: bool,
    https_images_only: bool,
    image_fetch_timeout: float,
    gpus_may_join: bool,
    autoscale: bool,
    min_generators: int,
    max_generators: int,
    min_vision: int,
    max_vision: int,
    scale_down_idle_s: float,
    max_queue_wait_s: float,
    log_level: str,
) -> None:
    """Serve one queue with one model: claim its jobs from Redis and run them on Ray.

    Runs until SIGTERM or SIGINT, then drains: jobs in flight get --drain-grace-s to finish,
    the rest go back to the queue for another server. Start as many servers on a queue as
    you like; each claims what it has room for.

    \b
    vlmq serve --model ./tiny-pixtral --queue captions --num-gpus 1
    """
    _log_to_stderr(log_level)
    # Imported here: Ray and torch are slow to import, and the other commands do not need them.
    import ray

    from orchestrator.allocator.config import AllocatorConfig
    from orchestrator.image_fetch.policy import ImageSourcePolicy
    from orchestrator.pipeline.actor_pool import PoolConfig
    from orchestrator.pipeline.config import PipelineConfig
    from orchestrator.queue.config import QueueConfig
    from orchestrator.queue.serve import serve as serve_queue
    from worker.engines import EngineConfig, EngineKind

    queue_config = QueueConfig(
        redis_url=redis_settings,
        queue=queue,
        namespace=namespace,
        lease_s=lease_s,
        renew_every_s=lease_s / 3,
        drain_grace_s=drain_grace_s,
        max_backlog=max_backlog,
    )
    scaler_config = None
    if autoscale:
        from orchestrator.scaler.config import RoleBounds, ScalerConfig

        try:
            scaler_config = ScalerConfig(
                vision=RoleBounds(min_vision, max_vision),
                generators=RoleBounds(min_generators, max_generators),
                idle_s=scale_down_idle_s,
                max_queue_wait_s=max_queue_wait_s,
            )
        except ValueError as error:
            raise click.UsageError(str(error)) from None
    if no_image_urls and url_hosts:
        raise click.UsageError("--no-image-urls and --allow-url-host contradict each other")
    try:
        image_sources = ImageSourcePolicy(
            image_root=image_root,
            allowed_hosts=() if no_image_urls else (url_hosts or None),
            allow_loopback=allow_loopback_images,
            allow_private_networks=allow_private_network_images,
            allow_http=not https_images_only,
            timeout_s=image_fetch_timeout,
        )
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    try:
        pool_config = PoolConfig(
            num_vision_actors=vision_actors,
            num_generator_actors=generator_actors,
            gpus_per_vision_actor=(
                gpus_per_actor if gpus_per_vision_actor is None else gpus_per_vision_actor
            ),
            gpus_per_generator_actor=gpus_per_actor,
            name_prefix=f"{namespace}-{queue}",
            gpus_may_join=gpus_may_join,
            vision_resources=vision_resources,
            vision_label_selector=vision_labels,
        )
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    pipeline_config = PipelineConfig(
        engine=EngineConfig(str(model), EngineKind(engine), max_batch_size),
        allocator=AllocatorConfig(redis_settings, namespace=namespace),
        pool=pool_config,
        image_sources=image_sources,
    )
    if ray_address:
        ray.init(address=ray_address, log_to_driver=False)
    else:
        ray.init(num_gpus=num_gpus, include_dashboard=False, log_to_driver=False)
    try:
        serve_queue(queue_config, pipeline_config, scaler_config)
    finally:
        ray.shutdown()


def _pairs(given: tuple[str, ...], option: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in given:
        key, equals, value = item.partition("=")
        if not equals or not key.strip() or not value.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint=option)
        if key.strip() in pairs:
            raise click.BadParameter(f"{key.strip()!r} is given twice", param_hint=option)
        pairs[key.strip()] = value.strip()
    return pairs


def _vision_resources(given: tuple[str, ...]) -> dict[str, float]:
    amounts = {}
    for name, amount in _pairs(given, "--vision-resource").items():
        try:
            amounts[name] = float(amount)
        except ValueError:
            raise click.BadParameter(f"{name}={amount}: the amount is not a number",
                                     param_hint="--vision-resource") from None
    return amounts


def _log_to_stderr(level: str) -> None:
    """vlmq's own loggers (not Ray's or redis-py's) to stderr, one line a record."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("orchestrator", "worker"):
        logger = logging.getLogger(name)
        logger.setLevel(level.upper())
        logger.addHandler(handler)
