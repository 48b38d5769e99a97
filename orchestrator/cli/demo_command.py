"""`vlmq demo`: the bundled sample batch through Redis, `serve` and Ray, on this machine."""

from __future__ import annotations

import click

from orchestrator.cli.options import resolve_redis_settings


@click.command(short_help="run a sample batch on this machine, nothing to set up")
@click.option("--redis-url", metavar="URL",
              help="use this Redis (no password in it) instead of starting a private one; "
                   "$VLMQ_REDIS_URL is not read, so the demo never writes to it by accident")
@click.option("--redis-password-file", type=click.Path(dir_okay=False), metavar="FILE",
              help="with --redis-url: read its password from FILE (else $VLMQ_REDIS_PASSWORD)")
@click.option("--redis-ca", type=click.Path(dir_okay=False), metavar="FILE",
              help="with a rediss:// --redis-url: the CA of its TLS certificate")
def demo(redis_url: str | None, redis_password_file: str | None, redis_ca: str | None) -> None:
    """Run the sample batch on a local cluster: nothing to set up, nothing downloaded.

    Starts a private redis-server, a local Ray with two logical GPUs and a tiny random-weight
    Pixtral (its answers are noise), submits 24 jobs that share 4 images, and prints each
    result, then a summary: states, vision calls per distinct image, throughput.
    """
    settings = None
    if redis_url is not None:
        # Refuses a password on the command line; takes one from a file or the environment.
        settings = resolve_redis_settings(
            redis_url, password_file=redis_password_file, ca_file=redis_ca
        )
    elif redis_password_file is not None or redis_ca is not None:
        raise click.UsageError("--redis-password-file and --redis-ca go with --redis-url")

    # Imported here: Ray and torch are slow to import, and the other commands do not need them.
    from orchestrator.demo import run_demo

    code = run_demo(settings)
    if code:
        raise click.exceptions.Exit(code)
