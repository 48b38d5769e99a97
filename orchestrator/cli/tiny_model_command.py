"""`vlmq make-tiny-model`: a tiny random-weight VLM of a real architecture, in HF format."""

from __future__ import annotations

from pathlib import Path

import click

# The families of `worker.tiny.tokenizer.TinyTokenizerFamily`, spelled out so that `--help`
# need not import the tokenizer library; a test keeps the two the same.
FAMILIES = ("pixtral", "qwen2-vl")
MAX_SEED = 2**63


def _seed(_ctx: click.Context, _param: click.Parameter, text: str) -> int:
    # Checked here as well as in write_tiny_model, so a bad seed is a usage error (exit 2).
    try:
        seed = int(text)
    except ValueError:
        raise click.BadParameter(f"seed must be an integer, got {text!r}") from None
    if not 0 <= seed < MAX_SEED:
        raise click.BadParameter(f"seed must be in [0, 2**63), got {seed}")
    return seed


@click.command(
    "make-tiny-model", short_help="write a tiny random-weight VLM, for tests and trials"
)
@click.option("--family", required=True, type=click.Choice(FAMILIES),
              help="pixtral: Pixtral in Llava (as pixtral-12b); qwen2-vl: as "
                   "Qwen2-VL-2B-Instruct")
@click.option("--seed", default="0", show_default=True, callback=_seed, metavar="N",
              help="the weights are drawn from it")
@click.option("--force", is_flag=True,
              help="write into a non-empty directory; a tiny model already there is replaced")
@click.argument("directory", metavar="DIR", type=click.Path(path_type=Path))
def make_tiny_model(family: str, seed: int, force: bool, directory: Path) -> None:
    """Write a tiny random-weight VLM into DIR (created if missing), in Hugging Face format.

    Nothing is downloaded: the tokenizer is trained on the spot, the weights are drawn from
    --seed, so the same seed writes the same bytes. Its answers are noise; it is for tests,
    the demo and trying `vlmq serve` on a laptop.

    \b
    vlmq make-tiny-model --family pixtral ./tiny-pixtral
    """
    if directory.exists() and not directory.is_dir():
        raise click.UsageError(f"{directory} exists and is not a directory")
    if directory.is_dir() and any(directory.iterdir()) and not force:
        raise click.UsageError(f"{directory} is not empty; pass --force to write into it anyway")

    # Imported here: torch is slow to import, and the other commands do not need it.
    from typing import cast

    from worker.engines.model_fingerprint import model_fingerprint
    from worker.tiny.model import tiny_model_file_names, write_tiny_model
    from worker.tiny.tokenizer import TinyTokenizerFamily

    tiny_family = cast(TinyTokenizerFamily, family)  # one of FAMILIES
    write_tiny_model(directory, tiny_family, seed)
    click.echo(f"wrote a tiny {family} model (seed {seed}) to {directory}:")
    for name in tiny_model_file_names(tiny_family):
        click.echo(f"  {name:<26} {(directory / name).stat().st_size:>10,} bytes")
    click.echo(f"fingerprint {model_fingerprint(directory)}")
