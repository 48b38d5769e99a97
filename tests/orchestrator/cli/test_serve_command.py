"""`vlmq serve`'s placement options for vision actors: a bad value is refused as a usage error
(exit 2) that names it, before Ray or a model is started."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator.cli import main
from orchestrator.cli.exit_codes import ExitCode


@pytest.mark.parametrize(("options", "complaint"), [
    (["--vision-resource", "vision_gpu"], "'vision_gpu' is not KEY=VALUE"),
    (["--vision-resource", "=1"], "'=1' is not KEY=VALUE"),
    (["--vision-resource", "vision_gpu=lots"], "vision_gpu=lots: the amount is not a number"),
    (["--vision-resource", "vision_gpu=1", "--vision-resource", "vision_gpu=2"],
     "'vision_gpu' is given twice"),
    (["--vision-resource", "GPU=1"], "custom resources"),
    (["--vision-resource", "vision_gpu=0"], "positive amounts"),
    (["--vision-resource", "vision_gpu=inf"], "positive amounts"),
    (["--vision-resource", "vision_gpu=nan"], "positive amounts"),
    (["--vision-node-label", "vlmq/pool"], "'vlmq/pool' is not KEY=VALUE"),
    (["--vision-node-label", "bad key=vision"], "Invalid label key name `bad key`"),
    (["--vision-node-label", "pool=not a value"], "Invalid label selector value"),
    (["--gpus-per-vision-actor", "1.5"], "whole number of GPUs"),
    (["--gpus-per-vision-actor", "0"], "--gpus-per-vision-actor"),
])
def test_a_bad_vision_placement_is_a_usage_error_naming_it(
    options: list[str], complaint: str, tmp_path: Path,
) -> None:
    done = CliRunner().invoke(
        main, ["serve", "--model", str(tmp_path), "--redis-url", "redis://127.0.0.1:1/0",
               *options], prog_name="vlmq",
    )
    assert done.exit_code == ExitCode.USAGE, done.output
    assert complaint in done.output
