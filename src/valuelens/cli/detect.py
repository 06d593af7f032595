"""``valuelens detect …``: download data, train, evaluate, compare methods, predict."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from ..errors import ConfigError

DEFAULT_DATA_HELP = ("folder with the official ValueEval'23 TSV files (default: $VALUELENS_DATA/valueeval23, "
                     "~/.cache/valuelens/data/valueeval23, or ../shared/data/valueeval23 when present)")


def _data_dir(data: str | None) -> Path:
    from ..detect.data import resolve_data_dir

    return resolve_data_dir(data)


def _echo(msg: str) -> None:
    click.echo(msg, err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def detect() -> None:
    """Detect the 20 ValueEval'23 value categories (and the 10 Schwartz values) in arguments and text.

    Typical use: `valuelens detect train --out runs/minilm` then
    `valuelens detect predict --model runs/minilm/model --input args.tsv --output run.tsv`.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@detect.command("download")
@click.option("--dest", type=click.Path(file_okay=False), default=None,
              help="target folder (default ~/.cache/valuelens/data/valueeval23)")
def download_cmd(dest: str | None) -> None:
    """Download the official ValueEval'23 training/validation files from Zenodo and verify their sha256."""
    from ..detect.data import download

    out = download(dest)
    click.echo(str(out))


def _train_options(f: Any) -> Any:
    opts = [
        click.option("--data", type=click.Path(), default=None, help=DEFAULT_DATA_HELP),
        click.option("--encoder", default="minilm", show_default=True,
                     help="minilm, mpnet, e5-small, a Hugging Face model id or a local folder"),
        click.option("--epochs", type=int, default=4, show_default=True),
        click.option("--batch-size", type=int, default=32, show_default=True),
        click.option("--lr", type=float, default=5e-5, show_default=True),
        click.option("--head-lr", type=float, default=None, help="learning rate of the head (default: --lr)"),
        click.option("--max-len", type=int, default=128, show_default=True),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--loss", type=click.Choice(["bce", "bce-pos", "focal"]), default="bce", show_default=True),
        click.option("--train-layers", type=int, default=None,
                     help="train only the top k encoder layers (0 = frozen encoder; default all)"),
        click.option("--bf16/--no-bf16", default=False, show_default=True,
                     help="bfloat16 autocast on CPU (about 2x faster, same F1)"),
        click.option("--patience", type=int, default=2, show_default=True, help="early-stopping patience (epochs)"),
        click.option("--thresholds", "threshold_source", type=click.Choice(["heldout", "validation", "crossfit", "none"]),
                     default="heldout", show_default=True,
                     help="where per-category thresholds (and early stopping) are tuned: held-out 10%% of "
                          "training (honest), validation (paper setup, optimistic), crossfit, or none (0.5)"),
        click.option("--heldout-seed", type=int, default=None,
                     help="seed of the held-out split (default --seed); keep it fixed across ensemble members"),
        click.option("--max-train", type=int, default=None, help="use only the first N training arguments"),
        click.option("--checkpoint-every", type=int, default=0, show_default=True,
                     help="also checkpoint every N steps inside an epoch"),
        click.option("--prior-bias/--zero-bias", default=True, show_default=True,
                     help="start the head's bias at each category's log prior odds (else zero)"),
        click.option("--epoch-eval/--no-epoch-eval", "eval_each_epoch", default=True, show_default=True,
                     help="score the held-out part after every epoch (early stopping); off: keep the last epoch"),
        click.option("--threshold-objective", type=click.Choice(["macro", "category"]), default="macro",
                     show_default=True, help="thresholds maximise the official macro F1 or each category's F1"),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


@detect.command("train")
@_train_options
@click.option("--preset", type=click.Choice(["fast", "best", "pipeline"]), default=None,
              help="a named recipe (docs/detector.md): fast = the default MiniLM recipe, best = mpnet + TF-IDF "
                   "(strongest), pipeline = MiniLM 1 epoch, the judge of `valuelens run` (fastest); options "
                   "given explicitly override the preset's")
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="run folder (checkpoints; the final detector goes to OUT/model, OUT/ensemble for best). "
                   "Rerun to resume.")
@click.option("--eval-split", "--split", "eval_split", default="validation", show_default=True,
              help="split scored at the end (e.g. test: scored if labels-test.tsv exists, else an official run "
                   "file OUT/run-test.tsv is written)")
@click.option("--no-eval", is_flag=True, help="score no split at the end (held-out thresholds only)")
@click.option("--members", type=click.IntRange(min=1), default=None,
              help="with --preset: neural members (seeds --seed, --seed+1, … on one held-out split), averaged "
                   "(default: the preset's)")
@click.option("--prompt-len", type=int, default=0, help="soft-prompt tokens (prompt tuning; use with --train-layers 0)")
@click.option("--template", default=None, help='hard template, e.g. "{text} The value behind this is {mask}."')
@click.option("--pooling", type=click.Choice(["mean", "cls", "mask"]), default="mean", show_default=True)
@click.option("--length-buckets/--random-batches", default=False, show_default=True,
              help="batches of similar length (~2.5x fewer padded tokens on ValueEval)")
@click.option("--aux-heads", default="", help="multi-task heads: values and/or level1, comma-separated")
@click.option("--hierarchy/--no-hierarchy", default=False, show_default=True,
              help="combine each category with its value's head (weight chosen on the held-out part)")
@click.option("--calibration", type=click.Choice(["platt", "temperature", "isotonic", "none"]), default="platt",
              show_default=True, help="probability calibration fitted on the held-out part")
def train_cmd(data: str | None, out: str, eval_split: str, no_eval: bool, preset: str | None,
              members: int | None, **kw: Any) -> None:
    """Fine-tune an encoder (or prompt-tune a frozen one) on the training split; resumable."""
    from click.core import ParameterSource

    from ..detect.data import load_split
    from ..detect.finetune import TrainConfig, train_detector

    folder = _data_dir(data)
    level1 = "level1" in str(kw.get("aux_heads") or "")
    train = load_split(folder, "training", level1=level1)
    labelled = eval_split in ("training", "validation") or (folder / f"labels-{eval_split}.tsv").exists()
    valid = None if no_eval else load_split(folder, eval_split, require_labels=labelled)
    if preset:
        from ..detect.presets import PRESETS, train_preset

        ctx = click.get_current_context()
        given = {k: v for k, v in kw.items() if ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE}
        bf16 = given.pop("bf16", "auto")
        if "level1" in PRESETS[preset].config.aux_names() and train.level1 is None:
            train = load_split(folder, "training", level1=True)
        pres = train_preset(preset, train, valid, out, bf16=bf16, log=_echo, members=members, **given)
        s, model_dir, minutes = pres.scores, pres.model_dir, pres.train_seconds / 60
    else:
        if members is not None:
            raise click.UsageError("--members needs --preset (several seeds of one recipe, averaged)")
        res = train_detector(train, valid, TrainConfig(**kw), out, log=_echo)
        s, model_dir, minutes = res.scores, Path(out) / "model", res.train_seconds / 60
    if "f1" in s:
        _echo(f"{eval_split}: macro P {s['precision']:.4f} R {s['recall']:.4f} F1 {s['f1']:.4f} "
              f"(thresholds: {s['main']}); validation-tuned F1 {s['validation_tuned']['f1']:.4f}, "
              f"crossfit F1 {s['crossfit']['f1']:.4f}")
        if "calibration" in s:
            c = s["calibration"]
            _echo(f"{eval_split}: mean expected calibration error {c['ece_raw_mean']:.4f} raw → {c['ece_mean']:.4f} "
                  f"({c['method']})")
    elif valid is not None:
        _echo(f"{eval_split} has no labels: run file {Path(out) / f'run-{eval_split}.tsv'}")
    _echo(f"{minutes:.1f} min training")
    click.echo(str(model_dir))


@detect.command("retune")
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False), required=True,
              help="trained detector folder (its thresholds.json is rewritten)")
@click.option("--data", type=click.Path(), default=None, help=DEFAULT_DATA_HELP)
@click.option("--objective", type=click.Choice(["macro", "category"]), default="macro", show_default=True,
              help="maximise the official macro F1, or each category's own F1")
@click.option("--bf16/--no-bf16", default=False)
def retune_cmd(model_dir: str, data: str | None, objective: str, bf16: bool) -> None:
    """Re-tune a trained detector's thresholds on the data its training tuned them on (weights untouched)."""
    from ..detect.data import load_split
    from ..detect.finetune import retune_detector

    folder = _data_dir(data)
    s = retune_detector(model_dir, load_split(folder, "training"), load_split(folder, "validation"),
                        objective=objective, bf16=bf16)
    _echo(f"validation: macro P {s['precision']:.4f} R {s['recall']:.4f} F1 {s['f1']:.4f} "
          f"(thresholds: {s['main']}, objective {objective}); validation-tuned F1 {s['validation_tuned']['f1']:.4f}, "
          f"crossfit F1 {s['crossfit']['f1']:.4f}")


@detect.command("evaluate")
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False), required=True,
              help="trained detector folder")
@click.option("--data", type=click.Path(), default=None, help=DEFAULT_DATA_HELP)
@click.option("--split", default="validation", show_default=True,
              help="split name in the data folder (arguments-<split>.tsv + labels-<split>.tsv), e.g. test")
@click.option("--arguments", "arguments_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="an arguments TSV in the task's format (instead of --split; needs --labels)")
@click.option("--labels", "labels_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="the labels TSV for --arguments")
@click.option("--bootstrap", "n_boot", type=int, default=1000, show_default=True, help="bootstrap resamples for CIs")
@click.option("--reliability", type=click.Path(dir_okay=False), default=None,
              help="write a reliability diagram PNG (calibrated detectors)")
@click.option("--bf16/--no-bf16", default=False)
@click.option("--json-out", type=click.Path(dir_okay=False), default=None, help="also write the scores as JSON")
def evaluate_cmd(model_dir: str, data: str | None, split: str, arguments_path: str | None, labels_path: str | None,
                 n_boot: int, reliability: str | None, bf16: bool, json_out: str | None) -> None:
    """Score a trained detector on any labelled file: official macro P/R/F1 and per-category P/R/F1 with
    bootstrap CIs, expected calibration error per category."""
    from ..detect.data import load_split
    from ..detect.evaluate import evaluate_detector, load_labelled, render_evaluation
    from ..detect.finetune import load_detector
    from ..runio import atomic_write_json

    if (arguments_path is None) != (labels_path is None):
        raise ConfigError("--arguments and --labels go together")
    if n_boot < 10:
        raise ConfigError(f"--bootstrap must be >= 10, got {n_boot}")
    det = load_detector(model_dir)
    sp = (load_labelled(arguments_path, labels_path) if arguments_path and labels_path
          else load_split(_data_dir(data), split))
    res = evaluate_detector(det, sp, n_boot=n_boot, bf16=bf16, reliability_png=reliability, progress=True)
    click.echo(render_evaluation(res))
    if json_out:
        atomic_write_json(json_out, res)


@detect.command("calibrate")
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False), required=True,
              help="trained detector folder (its calibration.json is (re)written)")
@click.option("--data", type=click.Path(), default=None, help=DEFAULT_DATA_HELP)
@click.option("--method", type=click.Choice(["platt", "temperature", "isotonic", "none"]), default="platt",
              show_default=True)
@click.option("--bf16/--no-bf16", default=False)
def calibrate_cmd(model_dir: str, data: str | None, method: str, bf16: bool) -> None:
    """Fit a trained detector's probability calibration on its held-out training part (weights untouched);
    prints the expected calibration error on validation, raw and calibrated."""
    from ..detect.data import load_split
    from ..detect.finetune import calibrate_detector

    folder = _data_dir(data)
    r = calibrate_detector(model_dir, load_split(folder, "training"), method=method,
                           valid=load_split(folder, "validation"), bf16=bf16)
    _echo(f"{method} calibration fitted on {r['n_fit']} held-out training arguments; validation mean ECE "
          f"{r['ece_raw_mean']:.4f} raw → {r['ece_mean']:.4f}")


@detect.command("ensemble")
@click.option("--model", "models", multiple=True, required=True, type=click.Path(exists=True, file_okay=False),
              help="trained detector folder (repeat for each member)")
@click.option("--data", type=click.Path(), default=None, help=DEFAULT_DATA_HELP)
@click.option("--split", default="validation", show_default=True, help="split scored at the end")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="folder for the ensemble detector")
@click.option("--bf16/--no-bf16", default=False)
@click.option("--tfidf/--no-tfidf", default=False, show_default=True,
              help="add a TF-IDF + logistic-regression member (weight chosen on the held-out part)")
def ensemble_cmd(models: tuple[str, ...], data: str | None, split: str, out: str, bf16: bool, tfidf: bool) -> None:
    """Average several trained detectors (optionally + TF-IDF); thresholds on their shared held-out part."""
    from ..detect.data import load_split
    from ..detect.finetune import build_ensemble

    folder = _data_dir(data)
    ens, scores = build_ensemble(list(models), load_split(folder, "training"), load_split(folder, split), out,
                                 bf16=bf16, tfidf=tfidf)
    _echo(f"member weights: {[round(float(w), 3) for w in ens.weights]}")
    h = scores["heldout"]
    _echo(f"{split}: macro P {h['precision']:.4f} R {h['recall']:.4f} F1 {h['f1']:.4f} (held-out thresholds); "
          f"crossfit F1 {scores['crossfit']['f1']:.4f}; validation-tuned F1 {scores['validation_tuned']['f1']:.4f}")
    click.echo(out)


@detect.command("compare")
@click.option("--methods", default="all-ones,tfidf,finetune", show_default=True,
              help="comma-separated: all-ones, tfidf, finetune, finetune-top2, soft-prompt, hard-template, "
                   "preset-fast, preset-best, preset-pipeline, llm-zero, llm-few, llm-cot (LLM methods need --llm)")
@click.option("--data", type=click.Path(), default=None, help=DEFAULT_DATA_HELP)
@click.option("--split", default="validation", show_default=True, help="evaluation split")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="output folder (resumable)")
@click.option("--encoder", default="minilm", show_default=True)
@click.option("--epochs", type=int, default=4, show_default=True)
@click.option("--bf16/--no-bf16", default=None, help="bf16 autocast (default: only where the CPU/GPU has native bf16)")
@click.option("--max-train", type=int, default=None, help="use only the first N training arguments")
@click.option("--max-eval", type=int, default=None, help="score only the first N evaluation arguments")
@click.option("--llm", "llm_spec", default=None, help="LLM backend, e.g. local:smollm2 or openai:URL#model")
@click.option("--prompt-epochs", type=int, default=None,
              help="epochs of soft-prompt tuning (default --epochs; the hard template early-stops by itself)")
def compare_cmd(methods: str, data: str | None, split: str, out: str, encoder: str, epochs: int, bf16: bool | None,
                max_train: int | None, max_eval: int | None, llm_spec: str | None, prompt_epochs: int | None) -> None:
    """Train and evaluate several methods on the same split; write one table (CSV, Markdown, PNG)."""
    from ..detect.compare import compare

    names = [m.strip() for m in methods.split(",") if m.strip()]
    if not names:
        raise ConfigError("--methods is empty")
    table = compare(names, split, out, data_dir=_data_dir(data), encoder=encoder, epochs=epochs, bf16=bf16,
                    max_train=max_train, max_eval=max_eval, llm_spec=llm_spec, prompt_epochs=prompt_epochs,
                    log=_echo)
    click.echo(table)


@detect.command("predict")
@click.option("--model", "model_dir", type=click.Path(exists=True, file_okay=False), required=True,
              help="trained detector folder")
@click.option("--input", "input_path", type=click.Path(exists=True, dir_okay=False), required=True,
              help="arguments TSV (official layout) or JSONL with a text field")
@click.option("--output", type=click.Path(dir_okay=False), required=True,
              help="run file TSV (for a TSV input) or JSONL (for a JSONL input)")
@click.option("--text-field", default="text", show_default=True, help="JSONL field holding the text")
@click.option("--bf16/--no-bf16", default=False)
def predict_cmd(model_dir: str, input_path: str, output: str, text_field: str, bf16: bool) -> None:
    """Write an official run file for an arguments TSV, or score free text (JSONL in, JSONL out)."""
    from ..detect.finetune import load_detector
    from ..detect.predict import predict_jsonl, write_run_file

    det = load_detector(model_dir)
    if input_path.endswith((".jsonl", ".json")):
        n = predict_jsonl(det, input_path, output, text_field=text_field, bf16=bf16)
    else:
        n = write_run_file(det, input_path, output, bf16=bf16)
    _echo(f"wrote {n} rows to {output}")


def _print_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2))
