"""``valuelens pack | push | convert``: value vectors as shareable artifacts."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import click

from ..errors import ConfigError


@click.command("pack")
@click.argument("source")
@click.argument("out")
@click.option("--values", default="Benevolence,Power,Achievement,Universalism", show_default=True,
              help="with SOURCE quick:MODEL: the values to make quick vectors for")
def pack_cmd(source: str, out: str, values: str) -> None:
    """Write SOURCE's vectors (a run folder or vector folder) as a vector folder OUT: vectors.safetensors,
    config.json (model, layers, α scale, values, kinds, judge) and a README model card with the run's findings.

    SOURCE quick:MODEL (e.g. quick:smollm2) makes prompt-contrast vectors in a minute instead (value system
    prompt vs none, over shipped queries; not the paper's judged value vectors) to try serving and sharing.
    """
    from ..serving.artifacts import VectorArtifact

    if source.startswith("quick:"):
        from ..models import load_model
        from ..serving.quick import quick_vectors

        lm = load_model(source.split(":", 1)[1])
        art = quick_vectors(lm, [v.strip() for v in values.split(",") if v.strip()])
        art.save_pretrained(out)
        click.echo(f"wrote {out}: quick prompt-contrast vectors for {', '.join(art.values)} (layer {art.layer})")
        return
    art = VectorArtifact.load(source)
    run = source if Path(source).is_dir() and (Path(source) / "vectors.safetensors").is_file() else None
    folder = art.save_pretrained(out, run=run)
    click.echo(f"wrote {folder} ({len(art.values)} values × {len(art.kinds)} kinds, layers "
               f"{min(art.vectors.layers)}..{max(art.vectors.layers)})")


@click.command("push")
@click.argument("source")
@click.argument("repo")
@click.option("--private", is_flag=True, help="create the repo as private")
@click.option("--token-env", default="HF_TOKEN", show_default=True,
              help="environment variable with the Hub token (never printed)")
@click.option("--dry-run", is_flag=True, help="build the folder and list what would be uploaded; no network")
def push_cmd(source: str, repo: str, private: bool, token_env: str, dry_run: bool) -> None:
    """Upload SOURCE (a run folder or vector folder) to the Hugging Face Hub as REPO (user/name)."""
    from ..serving.artifacts import VectorArtifact, is_hub_id, push_to_hub

    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ConfigError(f"REPO must be a Hub repo id like user/name, got {repo!r}")
    if is_hub_id(source):
        raise ConfigError(f"SOURCE must be a local run or vector folder, got {source!r}")
    art = VectorArtifact.load(source)
    with tempfile.TemporaryDirectory(prefix="valuelens-push-") as tmp:
        run = source if (Path(source) / "vectors.safetensors").is_file() else None
        folder = art.save_pretrained(Path(tmp) / "vectors", run=run)
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        if dry_run:
            click.echo(f"would upload to {repo}: {', '.join(files)}")
            return
        url = push_to_hub(folder, repo, private=private, token=os.environ.get(token_env) or None)
    click.echo(f"pushed {len(files)} files to {url}")


@click.command("convert")
@click.argument("source")
@click.argument("out")
@click.option("--to", "fmt", type=click.Choice(["repeng", "steering-vectors", "valuelens"]), required=True,
              help="repeng: a control-vector GGUF (repeng, llama.cpp); steering-vectors: SteeringVector "
                   "safetensors; valuelens: a vector folder (from either of the others)")
@click.option("--value", default=None, help="which value (default: the only one, or required)")
@click.option("--kind", default=None, help="which kind (default: prompted when present)")
@click.option("--layers", default=None, help="comma-separated layers (default: every stored layer)")
@click.option("--scale", type=click.Choice(["relative", "raw"]), default="relative", show_default=True,
              help="relative: multipliers/coefficients equal valuelens's α; raw: the stored vector unchanged")
@click.option("--n-layers", type=int, default=None, help="valuelens from steering-vectors: the model's layer count")
def convert_cmd(source: str, out: str, fmt: str, value: str | None, kind: str | None, layers: str | None,
                scale: str, n_layers: int | None) -> None:
    """Convert vectors between valuelens, repeng / llama.cpp control vectors and steering-vectors."""
    from ..serving import converters as cv
    from ..serving.artifacts import VectorArtifact

    layer_list = [int(x) for x in layers.split(",")] if layers else None
    if fmt == "valuelens":
        src = Path(source)
        if src.suffix == ".gguf":
            art = cv.from_control_vector_gguf(src, value=value, kind=kind, n_layers=n_layers)
        elif src.suffix == ".safetensors":
            sv, meta = cv.load_steering_vector(src)
            v = value or meta.get("value")
            if not v:
                raise ConfigError("--value is required for a steering vector that does not name one")
            n = n_layers or int(meta.get("n_layers", 0)) or max(sv.layer_activations) + 1
            art = cv.from_steering_vector(sv, v, kind or meta.get("kind", "steering_vector"), n_layers=n,
                                          model_hash=meta.get("model_hash", ""))
        else:
            raise ConfigError(f"{source}: expected a .gguf control vector or a .safetensors steering vector")
        art.save_pretrained(out)
        click.echo(f"wrote {out}")
        return
    art = VectorArtifact.load(source)
    if value is None:
        if len(art.values) != 1:
            raise ConfigError(f"--value is required (these vectors have {', '.join(art.values)})")
        value = art.values[0]
    if kind is None:
        kind = "prompted" if "prompted" in art.kinds else art.kinds[0]
    if fmt == "repeng":
        res = cv.to_control_vector_gguf(art, value, kind, out, layers=layer_list, scale=scale)  # type: ignore[arg-type]
        click.echo(f"wrote {out}: layers {res['layers'][0]}..{res['layers'][-1]} ({scale}); llama.cpp: "
                   f"--control-vector-scaled {out} ALPHA")
    else:
        sv = cv.to_steering_vector(art, value, kind, layers=layer_list, scale=scale)  # type: ignore[arg-type]
        cv.save_steering_vector(sv, out, value=value, kind=kind, scale=scale, model_hash=art.vectors.model_hash,
                                n_layers=str(art.vectors.n_layers))
        click.echo(f"wrote {out}: SteeringVector over {len(sv.layer_activations)} layers ({scale})")
