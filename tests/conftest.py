from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
VALUEEVAL_DIR = REPO_ROOT.parent / "shared" / "data" / "valueeval23"


@pytest.fixture(scope="session")
def load_benchmark():
    """Import a script of benchmarks/ by name (e.g. ``"bench_hooks"``) as a module, for smoke tests."""
    import importlib.util
    import sys

    def load(name: str):
        path = REPO_ROOT / "benchmarks" / f"{name}.py"
        if str(path.parent) not in sys.path:
            sys.path.insert(0, str(path.parent))  # the scripts import benchmarks/_common.py
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    return load


@pytest.fixture(scope="session")
def valueeval_dir() -> Path:
    if not (VALUEEVAL_DIR / "arguments-training.tsv").is_file():
        pytest.fail(f"ValueEval data not found at {VALUEEVAL_DIR} (expected ../shared/data/valueeval23)")
    return VALUEEVAL_DIR


@pytest.fixture(scope="session")
def smollm2():
    """The embedded SmolLM2-135M-Instruct, loaded once per session (from the safetensors cache after the first run)."""
    from valuelens.models import load_model

    return load_model("smollm2")


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    """The tiny random chat model saved as a model folder, so subprocesses and Ray workers load it by path."""
    from valuelens.testing import tiny_chat_lm

    lm = tiny_chat_lm()
    d = tmp_path_factory.mktemp("tiny-chat")
    lm.model.save_pretrained(d)
    lm.tokenizer.save_pretrained(d)
    return d
