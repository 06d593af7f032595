"""Run the extract stages and the analysis sections on Ray: one machine's cores, several GPUs, or a cluster.

``valuelens extract --ray`` (or ``run --ray``) starts a local Ray instance; ``--ray ADDRESS`` joins a running
cluster (``ray start --head`` prints its address; ``ray://host:10001`` for Ray Client). The work units are the
ones ``--shard i/n`` already defines, each submitted as a Ray task with a resource request:

=============  ===============================  =====================================================
stage          tasks                            resources per task
=============  ===============================  =====================================================
prepare        1 (renders every prompt)         ``num_cpus`` (+ ``num_gpus``: it loads the model)
generate       ``shards`` (every n-th batch     ``num_cpus`` + ``num_gpus`` (1 per task when the cluster
               of the batch plan)               has GPUs, else 0)
judge          1                                ``num_cpus`` (the detector is small)
activations    ``shards`` (every n-th chunk)    ``num_cpus`` + ``num_gpus``
vectors        1                                ``num_cpus``
=============  ===============================  =====================================================

Why the result equals a single process's: a generate shard takes whole batches of the plan over *all* items,
with the batch's own seed (:func:`valuelens.generate.plan_batches`), and an activation shard takes whole
chunks, so every record and every tensor is computed from the same inputs in the same grouping as in one
process. Same JSONL records; vectors equal up to floating-point summation order (within 1e-5).

Why a killed worker loses nothing: Ray retries a task whose worker died (``max_retries``); the retried shard
resumes from its own files — response shard files keep only whole batches (a torn or partial batch is
regenerated whole), activation chunks and every other output are written atomically — so no record is lost or
written twice. Errors of the user's making (a bad config, a missing file) are not retried: they come back as
the same one-line error a single process gives.

Analysis (:func:`run_analyze_ray`): each section is one task, submitted as soon as the sections it
``requires`` are done (so everything after the capability guard runs in parallel); a section task restores its
requirements from their cached ``summary.json`` exactly as a resumed single-process analysis does, and a last
task re-derives ``findings.json`` and the index from the sections' files.

Every task loads the model once per Ray worker process (cached for the next task of the same model). All
machines must see the run folder at the same path (a shared file system) and have valuelens installed;
``$VALUELENS_*``, ``$HF_*`` and thread settings travel to the workers in the job's runtime environment.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, ModelError, ValuelensError

if TYPE_CHECKING:
    from .analysis import AnalyzeConfig
    from .extract import ExtractConfig

__all__ = ["RayOptions", "RayUnavailable", "connect", "run_analyze_ray", "run_extract_ray"]

RAY_HINT = "pip install 'valuelens[ray]'"
# Environment variables a worker needs to load the same model the same way as the driver.
_ENV_PREFIXES = ("VALUELENS_", "HF_", "TRANSFORMERS_", "OMP_", "MKL_", "TOKENIZERS_", "CUDA_VISIBLE_DEVICES")
# Stages that load the causal LM (and so want a GPU when there is one).
_MODEL_STAGES = ("prepare", "generate", "activations")


class RayUnavailable(ConfigError):
    """Ray is not installed, or the cluster at the given address does not answer."""


@dataclass
class RayOptions:
    """How to use Ray. ``address``: None or ``"local"`` starts a local instance; anything else is a cluster.

    ``shards``: generate/activation tasks per stage (default: one per worker slot — GPUs if the cluster has
    any, else CPUs — so every slot is busy; more shards balance better, and the result does not depend on it).
    ``num_cpus`` / ``num_gpus``: per model task (``num_gpus`` None: 1 when the cluster has GPUs, else 0).
    ``local_cpus``: CPUs a local instance may use (default: ``$VALUELENS_RAY_CPUS``, else all).
    ``max_retries``: per task, after a worker dies.
    """

    address: str | None = None
    shards: int | None = None
    num_cpus: float = 1.0
    num_gpus: float | None = None
    local_cpus: int | None = None
    max_retries: int = 3
    probe_timeout: float = 5.0

    def __post_init__(self) -> None:
        if self.shards is not None and self.shards < 1:
            raise ConfigError("Ray shards must be >= 1")
        if self.num_cpus <= 0 or (self.num_gpus is not None and self.num_gpus < 0) or self.max_retries < 0:
            raise ConfigError("Ray num_cpus must be > 0, num_gpus >= 0 and max_retries >= 0")

    @property
    def local(self) -> bool:
        return self.address in (None, "", "local")


def _require_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RayUnavailable(f"--ray needs Ray, which is not installed: {RAY_HINT}") from None
    return ray


def _host_port(address: str) -> tuple[str, int] | None:
    """``host:port`` of a Ray address (``ray://host:10001``, ``host:6379``, ``[::1]:6379``), None for ``auto``."""
    if address == "auto":
        return None
    p = urllib.parse.urlsplit(address if "://" in address else f"ray://{address}")
    if not p.hostname:
        raise RayUnavailable(f"--ray {address!r}: expected host:port or ray://host:port")
    try:
        port = p.port
    except ValueError:
        raise RayUnavailable(f"--ray {address!r}: the port is not a number") from None
    return p.hostname, port or (10001 if address.startswith("ray://") else 6379)


def _probe(address: str, timeout: float) -> None:
    """Fail in seconds, with one line, when nothing listens at ``address`` (Ray itself retries for minutes)."""
    hp = _host_port(address)
    if hp is None:
        return
    try:
        with socket.create_connection(hp, timeout=timeout):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise RayUnavailable(f"--ray {address}: no Ray cluster answers at {hp[0]}:{hp[1]} ({reason}); start one "
                             "with `ray start --head`, or use --ray without an address for a local Ray") from None


def _runtime_env() -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)}
    return {"env_vars": env} if env else {}


@contextlib.contextmanager
def connect(opts: RayOptions) -> Iterator[Any]:
    """Yield the ``ray`` module connected as asked; shut down on exit only what this call started."""
    ray = _require_ray()
    if ray.is_initialized():  # a caller (a test, a notebook) already connected: use that
        yield ray
        return
    kwargs: dict[str, Any] = {"runtime_env": _runtime_env(), "log_to_driver": False,
                              "include_dashboard": False, "configure_logging": False}
    if opts.local:
        cpus = opts.local_cpus or int(os.environ.get("VALUELENS_RAY_CPUS") or 0) or os.cpu_count() or 1
        kwargs.update(address="local", num_cpus=cpus,
                      object_store_memory=256 * 2**20)  # only small results travel through it
    else:
        assert opts.address is not None
        _probe(opts.address, opts.probe_timeout)
        kwargs["address"] = opts.address
    try:
        ray.init(**kwargs)
    except (ConnectionError, TimeoutError) as exc:
        raise RayUnavailable(f"--ray {opts.address}: cannot join the Ray cluster ({str(exc).splitlines()[0]})") \
            from None
    try:
        yield ray
    finally:
        ray.shutdown()


# --------------------------------------------------------------------------------------------------------------
# Worker side

_MODELS: dict[tuple[str, ...], Any] = {}


def _model(name: str) -> Any:
    """The model for ``name`` in this worker process, loaded on its first task (placement from the env)."""
    from .models import DEVICE_ENV, DEVICE_MAP_ENV, DTYPE_ENV, load_model

    key = (name, *(os.environ.get(k, "") for k in (DEVICE_ENV, DTYPE_ENV, DEVICE_MAP_ENV)))
    if key not in _MODELS:
        _MODELS.clear()  # one model per worker: a new one replaces the old
        _MODELS[key] = load_model(name)
    return _MODELS[key]


def _extract_task(run: str, cfg_dict: dict[str, Any], stage: str, shard: tuple[int, int]) -> dict[str, Any]:
    """One work unit, in a Ray worker: ``run_extract`` for one stage and shard."""
    from .extract import ExtractConfig, run_extract

    t0 = time.time()
    cfg = ExtractConfig.from_dict(cfg_dict)
    lm = _model(cfg.model) if stage in (*_MODEL_STAGES, "vectors") else None
    t_load = time.time() - t0
    summary = run_extract(run, cfg, stages=[stage], shard=tuple(shard), lm=lm)
    return {"stage": stage, "shard": list(shard), "pid": os.getpid(), "host": socket.gethostname(),
            "load_s": round(t_load, 3), "elapsed_s": round(time.time() - t0, 3), "summary": summary}


def _analyze_task(run: str, cfg_dict: dict[str, Any], section: str | None) -> dict[str, Any]:
    """One analysis section (its cached requirements restored), or with ``section=None`` the final pass that
    writes findings, index and manifest from the sections' files."""
    import json

    from .analysis import AnalyzeConfig, run_analyze

    t0 = time.time()
    d = dict(cfg_dict)
    if section is not None:
        d["sections"] = [section]
    cfg = AnalyzeConfig.from_dict(d)
    model = json.loads((Path(run) / "config.json").read_text()).get("extract", {}).get("model", "smollm2")
    lm = _model(model)
    t_load = time.time() - t0
    findings = run_analyze(run, cfg, lm=lm, log=None)
    return {"section": section, "pid": os.getpid(), "host": socket.gethostname(), "load_s": round(t_load, 3),
            "elapsed_s": round(time.time() - t0, 3), "findings": findings if section is None else None}


# --------------------------------------------------------------------------------------------------------------
# Driver side


@dataclass
class _Plan:
    shards: int
    num_gpus: float
    resources: dict[str, float] = field(default_factory=dict)


def _plan(ray: Any, opts: RayOptions) -> _Plan:
    res = {k: float(v) for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU", "memory")}
    gpus = res.get("GPU", 0.0)
    num_gpus = opts.num_gpus if opts.num_gpus is not None else (1.0 if gpus >= 1 else 0.0)
    if num_gpus > gpus:
        raise ConfigError(f"each Ray task asks for {num_gpus:g} GPU(s) but the cluster has {gpus:g}")
    slots = int(gpus // num_gpus) if num_gpus else int(res.get("CPU", 1.0) // opts.num_cpus)
    return _Plan(shards=opts.shards or max(1, slots), num_gpus=num_gpus, resources=res)


def _gather(ray: Any, refs: Sequence[Any], what: str) -> list[dict[str, Any]]:
    """``ray.get`` that turns a task's user error back into the same one-line error, and a worker that kept
    dying into one line too."""
    try:
        return list(ray.get(list(refs)))
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, ValuelensError):
            raise cause from None
        raise
    except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError) as exc:
        raise ModelError(f"a Ray worker died running {what} more often than the retries allow "
                         f"({type(exc).__name__}); see the Ray logs (ray logs / /tmp/ray/session_latest/logs)") \
            from None


def run_extract_ray(run_dir: str | Path, cfg: ExtractConfig, *, opts: RayOptions | None = None,
                    stages: Sequence[str] | None = None) -> dict[str, Any]:
    """``run_extract`` with its stages as Ray tasks; returns the vectors summary (when that stage ran).

    Stages run in order, each stage's tasks in parallel; ``manifest-ray.json`` in the run folder records the
    cluster's resources, the shards and every task's worker, model-load time and wall time.
    """
    from .extract import STAGES

    opts = opts or RayOptions()
    run = Path(run_dir).resolve()
    wanted = list(stages or STAGES)
    bad = [s for s in wanted if s not in STAGES]
    if bad:
        raise ConfigError(f"unknown stage(s) {', '.join(bad)}; stages: {', '.join(STAGES)}")
    cfg.validate()
    cfg_dict = cfg.to_dict()
    summary: dict[str, Any] = {}
    record: dict[str, Any] = {"address": opts.address or "local", "options": asdict(opts), "stages": {}}
    t_all = time.time()
    with connect(opts) as ray:
        plan = _plan(ray, opts)
        record.update(shards=plan.shards, num_gpus_per_task=plan.num_gpus, cluster_resources=plan.resources)
        task = ray.remote(_extract_task)
        for stage in STAGES:
            if stage not in wanted:
                continue
            n = plan.shards if stage in ("generate", "activations") else 1
            gpus = plan.num_gpus if stage in _MODEL_STAGES else 0.0
            t0 = time.time()
            refs = [task.options(name=f"valuelens-{stage}-{i}-of-{n}", num_cpus=opts.num_cpus, num_gpus=gpus,
                                 max_retries=opts.max_retries, retry_exceptions=False)
                    .remote(str(run), cfg_dict, stage, (i, n)) for i in range(n)]
            results = _gather(ray, refs, f"the {stage} stage")
            record["stages"][stage] = {"tasks": n, "num_gpus": gpus, "wall_s": round(time.time() - t0, 3),
                                       "results": [{k: v for k, v in r.items() if k != "summary"} for r in results]}
            if stage == "vectors":
                summary = results[0]["summary"]
    record["total_s"] = round(time.time() - t_all, 3)
    from .runio import write_manifest

    write_manifest(run, stage="extract-ray", config=cfg_dict, name="manifest-ray.json", extra={"ray": record})
    return summary


def run_analyze_ray(run_dir: str | Path, cfg: AnalyzeConfig, *, opts: RayOptions | None = None
                    ) -> list[dict[str, Any]]:
    """``run_analyze`` with each section as a Ray task, started as soon as its requirements are done; returns
    the findings. Sections already cached (same options) are restored, not rerun, as in one process."""
    from .analysis.base import iter_sections

    opts = opts or RayOptions()
    run = Path(run_dir).resolve()
    cfg.validate()
    if not (run / "vectors.safetensors").exists():
        from .errors import DataError

        raise DataError(f"{run}: no vectors.safetensors; run `valuelens extract --out {run}` first")
    order = [cls.name for cls in iter_sections(cfg.sections)]
    requires = {cls.name: [r for r in cls.requires if r in order] for cls in iter_sections(cfg.sections)}
    cfg_dict = cfg.to_dict()
    record: dict[str, Any] = {"address": opts.address or "local", "sections": {}}
    t_all = time.time()
    with connect(opts) as ray:
        plan = _plan(ray, opts)
        task = ray.remote(_analyze_task)

        def submit(name: str | None) -> Any:
            return task.options(name=f"valuelens-analyze-{name or 'findings'}", num_cpus=opts.num_cpus,
                                num_gpus=plan.num_gpus, max_retries=opts.max_retries,
                                retry_exceptions=False).remote(str(run), cfg_dict, name)

        done: set[str] = set()
        running: dict[Any, str] = {}
        while len(done) < len(order):
            for name in order:
                if name not in done and name not in running.values() and all(r in done for r in requires[name]):
                    running[submit(name)] = name
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                name = running.pop(ref)
                result = _gather(ray, [ref], f"analysis section {name}")[0]
                record["sections"][name] = {k: v for k, v in result.items() if k != "findings"}
                done.add(name)
        final = _gather(ray, [submit(None)], "the findings")[0]
    record["total_s"] = round(time.time() - t_all, 3)
    from .runio import write_manifest

    write_manifest(run, stage="analyze-ray", config=cfg_dict, name="manifest-analyze-ray.json",
                   extra={"ray": record})
    return list(final["findings"])
