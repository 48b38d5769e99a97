"""`python -m orchestrator.cli`: the same as the `vlmq` command."""

from orchestrator.cli import main

if __name__ == "__main__":  # not when a tool merely imports every module
    main(prog_name="vlmq")
