"""The layout's rules, checked on every import in `worker/` and `orchestrator/`.

The rules say which package may import what (`docs/ARCHITECTURE.md` draws them as arrows).
Each rule is also shown to fail: a small tree that breaks it, and nothing else, must be caught
by it. A subprocess then imports every module of vlmq with exllamav2 and transformers made
unimportable, as on a machine without them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.import_graph import ImportRule, ImportSite, SourceTree

REPO = Path(__file__).resolve().parent.parent
PRODUCT = ("worker", "orchestrator")


def vocabulary(tree: SourceTree) -> tuple[str, ...]:
    """`worker/`'s top level: the types and errors that every other package speaks."""
    return tree.top_level_modules("worker")


def rules(tree: SourceTree) -> tuple[ImportRule, ...]:
    words = vocabulary(tree)
    return (
        ImportRule("worker never imports orchestrator", ("worker",), forbidden=("orchestrator",)),
        ImportRule("worker never imports redis", ("worker",), forbidden=("redis",)),
        ImportRule(
            "only worker/engines/exllamav2 imports exllamav2",
            PRODUCT,
            forbidden=("exllamav2", "exllamav2_ext"),
            exempt=("worker.engines.exllamav2",),
        ),
        ImportRule(
            "only worker/engines/transformers and worker/tiny import transformers",
            PRODUCT,
            forbidden=("transformers",),
            exempt=("worker.engines.transformers", "worker.tiny"),
        ),
        ImportRule(
            "exllamav2 and transformers are imported inside functions only",
            PRODUCT,
            forbidden=("exllamav2", "exllamav2_ext", "transformers"),
            eager_only=True,
        ),
        ImportRule(
            "outside worker/engines, engines are reached through worker.engines",
            PRODUCT,
            forbidden=(
                "worker.engines.transformers",
                "worker.engines.exllamav2",
                "worker.engines.seam",
                "worker.engines.config",
            ),
            exempt=("worker.engines",),
        ),
        ImportRule("the vocabulary imports only itself", words, may_import=words),
        ImportRule(
            "worker/encoding builds on the vocabulary only",
            ("worker.encoding",),
            may_import=(*words, "worker.encoding"),
        ),
        ImportRule(
            "worker/images builds on the vocabulary only",
            ("worker.images",),
            may_import=(*words, "worker.images"),
        ),
        ImportRule(
            "worker/engines imports neither actors nor tiny models",
            ("worker.engines",),
            may_import=(*words, "worker.encoding", "worker.images", "worker.engines"),
        ),
        ImportRule(
            "worker/actors sits on the engines",
            ("worker.actors",),
            may_import=(
                *words,
                "worker.encoding",
                "worker.images",
                "worker.engines",
                "worker.actors",
            ),
        ),
        ImportRule(
            "worker/tiny stands apart",
            ("worker.tiny",),
            may_import=(*words, "worker.tiny"),
        ),
        ImportRule(
            "the allocator never imports the pipeline or the entry points",
            ("orchestrator.allocator",),
            forbidden=("orchestrator.pipeline", "orchestrator.cli", "orchestrator.demo"),
        ),
        ImportRule(
            "vlmq never imports its tests or benchmarks", PRODUCT, forbidden=("tests", "bench")
        ),
        ImportRule(
            "the queue's client side speaks Redis and the schema only",
            QUEUE_CLIENT_SIDE,
            forbidden=(
                "torch", "ray", "transformers", "PIL", "orchestrator.pipeline",
                "orchestrator.allocator", "orchestrator.queue.server",
                "orchestrator.queue.serve", "orchestrator.queue.runner",
            ),
            may_import=("worker.errors", "worker.sampling_params"),
        ),
        ImportRule(
            "the pipeline and the allocator never import the queue",
            ("orchestrator.pipeline", "orchestrator.allocator"),
            forbidden=("orchestrator.queue",),
        ),
        ImportRule(
            "orchestrator/batches reads files and speaks Redis, like the queue's client",
            ("orchestrator.batches",),
            forbidden=(
                "torch", "ray", "transformers", "PIL", "orchestrator.pipeline",
                "orchestrator.allocator", "orchestrator.queue.server",
                "orchestrator.queue.serve", "orchestrator.queue.runner",
            ),
            # The text tokenizer only inside ChatTemplate.from_model_dir (tokenizers, no torch).
            may_import=(
                "worker.errors", "worker.sampling_params", "worker.encoding.text_tokenizer",
            ),
        ),
    )


# What `Client` stands on: importable where only Redis is (no torch, ray or transformers).
QUEUE_CLIENT_SIDE = (
    "orchestrator.queue.client",
    "orchestrator.queue.schema",
    "orchestrator.queue.states",
    "orchestrator.queue.errors",
    "orchestrator.queue.library",
    "orchestrator.queue.config",
    "orchestrator.redis_keys",
    "orchestrator.redis_connection",
    "orchestrator.job_limits",
    "orchestrator.image_ref",
)


def test_vlmq_keeps_every_import_rule() -> None:
    tree = SourceTree(REPO, PRODUCT)
    violations = tree.violations(rules(tree))
    assert not violations, "\n".join(violations)


def test_the_rules_read_real_imports() -> None:
    """Guards the check itself: it sees the imports that we know are there."""
    tree = SourceTree(REPO, PRODUCT)
    sites = {(site.importer, site.target, site.eager) for site in tree.import_sites()}
    assert ("worker.engines.config", "worker.engines.exllamav2.engine", False) in sites
    assert ("orchestrator.allocator.id_ledger", "redis", True) in sites
    assert ("worker.span", "worker.token_range", True) in sites
    assert len(vocabulary(tree)) >= 6


# A tree that keeps every rule; each case below adds one module that breaks exactly one.
CLEAN_TREE = {
    "worker/__init__.py": "",
    "worker/span.py": "from worker.token_range import TokenRange\n",
    "worker/token_range.py": "import dataclasses\n",
    "worker/encoding/__init__.py": "",
    "worker/encoding/prompt_encoder.py": "from worker.span import Span\n",
    "worker/images/__init__.py": "",
    "worker/images/decoding.py": "import PIL\nfrom worker.token_range import TokenRange\n",
    "worker/engines/__init__.py": "from worker.engines.seam import VisionEngine\n",
    "worker/engines/seam.py": "from worker.span import Span\n",
    "worker/engines/config.py": (
        "def start():\n    from worker.engines.transformers.model import load\n"
    ),
    "worker/engines/transformers/__init__.py": "",
    "worker/engines/transformers/model.py": (
        "from worker.encoding.prompt_encoder import encode\n"
        "def load():\n    import transformers\n"
    ),
    "worker/engines/exllamav2/__init__.py": "",
    "worker/engines/exllamav2/model.py": "def load():\n    from exllamav2 import ExLlamaV2\n",
    "worker/actors/__init__.py": "",
    "worker/actors/vision.py": "from worker.engines import VisionEngine\n",
    "worker/tiny/__init__.py": "",
    "worker/tiny/model.py": "from worker.tiny import tokenizer\n",
    "worker/tiny/tokenizer.py": "import tokenizers\n",
    "orchestrator/__init__.py": "",
    "orchestrator/redis_keys.py": "",
    "orchestrator/demo.py": "from orchestrator.pipeline.driver import Pipeline\n",
    "orchestrator/allocator/__init__.py": "",
    "orchestrator/allocator/id_ledger.py": "import redis\nfrom orchestrator import redis_keys\n",
    "orchestrator/pipeline/__init__.py": "",
    "orchestrator/pipeline/driver.py": (
        "import ray\nfrom orchestrator.allocator.id_ledger import IdLedger\n"
        "from worker.engines import VisionEngine\n"
    ),
}

BREAKS = {
    "worker never imports orchestrator": (
        "worker/engines/epoch_gate.py",
        "from orchestrator.allocator import id_ledger\n",
    ),
    "worker never imports redis": ("worker/actors/generator.py", "import redis.asyncio\n"),
    "only worker/engines/exllamav2 imports exllamav2": (
        "worker/engines/transformers/vision.py",
        "def f():\n    import exllamav2\n",
    ),
    "only worker/engines/transformers and worker/tiny import transformers": (
        "orchestrator/pipeline/image_prep.py",
        "def f():\n    from transformers import AutoProcessor\n",
    ),
    "exllamav2 and transformers are imported inside functions only": (
        "worker/tiny/model_configs.py",
        "import transformers\n",
    ),
    "outside worker/engines, engines are reached through worker.engines": (
        "orchestrator/cli.py",
        "def f():\n    from worker.engines.transformers import model\n",
    ),
    "the vocabulary imports only itself": (
        "worker/generation.py",
        "from worker.encoding.prompt_encoder import PromptEncoder\n",
    ),
    "worker/encoding builds on the vocabulary only": (
        "worker/encoding/text_tokenizer.py",
        "from worker.images import decoding\n",
    ),
    "worker/images builds on the vocabulary only": (
        "worker/images/visual_tokens.py",
        "from ..encoding.prompt_encoder import PromptEncoder\n",
    ),
    "worker/engines imports neither actors nor tiny models": (
        "worker/engines/model_fingerprint.py",
        "def f():\n    from worker.tiny.model import write_tiny_model\n",
    ),
    "worker/actors sits on the engines": (
        "worker/actors/stats.py",
        "from worker.tiny.model import write_tiny_model\n",
    ),
    "worker/tiny stands apart": (
        "worker/tiny/chat_templates.py",
        "import importlib\nimportlib.import_module('worker.images.decoding')\n",
    ),
    "the allocator never imports the pipeline or the entry points": (
        "orchestrator/allocator/handle.py",
        "from orchestrator.pipeline import driver\n",
    ),
    "vlmq never imports its tests or benchmarks": (
        "orchestrator/pipeline/router.py",
        "from bench import workloads\n",
    ),
    "the queue's client side speaks Redis and the schema only": (
        "orchestrator/queue/client.py",
        "def f():\n    from orchestrator.pipeline.job import JobRequest\n",
    ),
    "the pipeline and the allocator never import the queue": (
        "orchestrator/pipeline/job.py",
        "from orchestrator.queue import schema\n",
    ),
    "orchestrator/batches reads files and speaks Redis, like the queue's client": (
        "orchestrator/batches/chat_template.py",
        "def f():\n    import torch\n",
    ),
}


def write_tree(root: Path, files: dict[str, str]) -> SourceTree:
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return SourceTree(root, PRODUCT)


def test_the_clean_tree_keeps_every_rule(tmp_path: Path) -> None:
    tree = write_tree(tmp_path, CLEAN_TREE)
    assert tree.violations(rules(tree)) == []


def test_every_rule_has_a_case_that_breaks_it() -> None:
    tree = SourceTree(REPO, PRODUCT)
    assert {rule.name for rule in rules(tree)} == set(BREAKS)


@pytest.mark.parametrize("rule_name", sorted(BREAKS))
def test_each_rule_catches_a_module_that_breaks_it(tmp_path: Path, rule_name: str) -> None:
    path, source = BREAKS[rule_name]
    tree = write_tree(tmp_path, {**CLEAN_TREE, path: source})
    violations = tree.violations(rules(tree))
    assert {line.split(": ", 1)[0] for line in violations} == {rule_name}, violations
    assert all(path in line for line in violations)  # and it names the offending file


def sites_of(tmp_path: Path, source: str, name: str = "worker/engines/seam.py") -> list[ImportSite]:
    tree = write_tree(
        tmp_path,
        {"worker/__init__.py": "", "worker/engines/__init__.py": "", name: textwrap.dedent(source)},
    )
    return [site for site in tree.import_sites() if site.path.name == Path(name).name]


def test_imports_inside_functions_are_lazy_and_elsewhere_eager(tmp_path: Path) -> None:
    sites = sites_of(
        tmp_path,
        """
        import a
        try:
            import b
        except ImportError:
            pass
        class C:
            import c
            def method(self):
                import d
        def f(x=__import__("e")):
            g = lambda: __import__("f")
        @decorate(__import__("g"))
        async def h():
            import i
        """,
    )
    eager = {site.target: site.eager for site in sites}
    assert eager == {
        "a": True, "b": True, "c": True, "d": False, "e": True, "f": False, "g": True, "i": False,
    }


def test_type_checking_blocks_are_left_out_but_their_else_is_not(tmp_path: Path) -> None:
    sites = sites_of(
        tmp_path,
        """
        import typing
        if typing.TYPE_CHECKING:
            import transformers
        else:
            import exllamav2
        """,
    )
    assert [site.target for site in sites] == ["typing", "exllamav2"]


def test_relative_imports_and_submodules_resolve(tmp_path: Path) -> None:
    files = {
        "worker/__init__.py": "from . import errors\n",
        "worker/errors.py": "",
        "worker/engines/__init__.py": "from .seam import X\nfrom . import seam\n",
        "worker/engines/seam.py": "from ..errors import E\nfrom worker import errors, gone\n",
    }
    tree = write_tree(tmp_path, files)
    found = {(site.importer, site.target) for site in tree.import_sites()}
    assert found == {
        ("worker", "worker.errors"),
        ("worker.engines", "worker.engines.seam"),
        ("worker.engines.seam", "worker.errors"),
        ("worker.engines.seam", "worker"),  # `gone` is a name in `worker`, not a module
    }


def test_import_calls_with_a_literal_name_count(tmp_path: Path) -> None:
    sites = sites_of(
        tmp_path,
        """
        import importlib
        from importlib import import_module
        importlib.import_module("exllamav2")
        import_module("transformers.models")
        importlib.import_module(name)
        """,
    )
    assert [site.target for site in sites] == [
        "importlib", "importlib", "exllamav2", "transformers.models",
    ]


BLOCKED_IMPORT = textwrap.dedent(
    """
    import importlib, importlib.abc, json, pkgutil, sys

    class Absent(importlib.abc.MetaPathFinder):
        # As on a machine without them: importing these libraries fails.
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("exllamav2", "exllamav2_ext", "transformers"):
                raise ModuleNotFoundError(f"No module named {name!r}")
            return None

    sys.meta_path.insert(0, Absent())
    packages = sys.argv[1:]
    names, failed = [], {}
    for package in packages:
        root = importlib.import_module(package)
        names.append(package)
        for info in pkgutil.walk_packages(root.__path__, package + "."):
            names.append(info.name)
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as error:
            failed[name] = repr(error)
    loaded = sorted({m.split(".")[0] for m in sys.modules})
    print(json.dumps({"names": names, "failed": failed, "loaded": loaded}))
    """
)


@dataclass(frozen=True)
class ImportWalk:
    names: list[str]  # every module of the packages walked
    failed: dict[str, str]  # module -> the error its import raised
    loaded: list[str]  # top-level names in sys.modules afterwards


def import_everything(*packages: str) -> ImportWalk:
    done = subprocess.run(
        [sys.executable, "-c", BLOCKED_IMPORT, *packages],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    return ImportWalk(**json.loads(done.stdout.strip().splitlines()[-1]))


def test_every_module_imports_without_exllamav2_or_transformers() -> None:
    walk = import_everything(*PRODUCT)
    assert walk.failed == {}
    assert "worker.engines.exllamav2.language" in walk.names  # the walk saw the engines
    assert "orchestrator.pipeline.driver" in walk.names


def test_the_worker_side_loads_neither_redis_nor_the_orchestrator() -> None:
    walk = import_everything("worker")
    assert "torch" in walk.loaded  # the walk did import the engines
    assert sorted({"redis", "orchestrator", "tests", "bench"} & set(walk.loaded)) == []


def test_no_module_keeps_a_prefix_its_folder_names() -> None:
    offenders = []
    for name, path in SourceTree(REPO, PRODUCT).modules().items():
        folder, stem = path.parent.name, path.stem
        for prefix in {folder, folder.removesuffix("s")}:
            if stem == prefix or stem.startswith(prefix + "_"):
                offenders.append(name)
    assert offenders == []


def test_tests_mirror_the_packages() -> None:
    """A test module sits in tests/ at the path of the package it tests, or at the top."""
    misplaced = []
    for path in sorted((REPO / "tests").rglob("test_*.py")):
        folder = path.parent.relative_to(REPO / "tests")
        if folder.parts and not (REPO / folder / "__init__.py").is_file():
            misplaced.append(str(path.relative_to(REPO)))
    assert misplaced == []
