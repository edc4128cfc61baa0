"""``medpipe train``: a bundle's own train config, run by MONAI's engines, with medpipe's checks.

No training loop lives here: the bundle's ``train`` config builds a MONAI ``SupervisedTrainer`` and
``SupervisedEvaluator``; this module merges the user's options into it as config overrides, checks
everything that can be checked up front (see :mod:`medpipe.bundle.workflow`), makes sure the data
exist (generating the embedded demo data on first use) and runs the workflow.

A run never writes into the bundle. Everything it makes goes to its own run folder (``--output``,
default ``runs/<bundle>/<YYYYmmdd-HHMMSS>/`` under the current directory): ``model.pt`` (the best
validation checkpoint), ``training_metrics.json``, ``training_curve.png``, ``train.log``,
``threshold.json`` (binary classifiers), ``config.json`` (the merged config with the overrides) and
``run.json`` (command, bundle version, time, best metric, weights hash). The shipped
``models/model.pt`` changes only by ``medpipe promote`` (:mod:`medpipe.bundle.promote`), with a version bump.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from medpipe import __version__
from medpipe.atomic import atomic_write_text, file_sha256
from medpipe.bundle.classifier import check_crop_size
from medpipe.bundle.layout import BundleLayout
from medpipe.bundle.workflow import build_workflow, device_expression, parsed
from medpipe.data.checks import check_labelled_cases
from medpipe.data.manifest import load_manifest
from medpipe.distributed import (
    broadcast_object,
    check_nproc,
    init_process_group,
    is_main,
    launch,
    local_device,
    multi_gpu_config,
    rank_output_dir,
    unwrap,
    world_size,
)
from medpipe.errors import Code, find_medpipe_error, look_up
from medpipe.perf import tune_malloc
from medpipe.resume import CHECKPOINT_FILE, record_resume, resume_checkpoint, resumed_run
from medpipe.transfer import freeze as apply_freeze
from medpipe.transfer import init_from, regroup_optimizer

#: Where runs go by default, relative to the current directory (git-ignored in this repository).
RUNS_DIR = "runs"
RUN_FILE = "run.json"


def training_overrides(
    manifest: str | Path | None = None,
    max_epochs: int | None = None,
    device: str | None = None,
    sets: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Overrides for the train workflow and the ids the user named (which must exist)."""
    overrides: dict[str, Any] = {}
    user_ids: list[str] = []
    if manifest is not None:
        overrides["manifest"] = str(load_manifest(manifest).path)
        user_ids.append("manifest")
    if max_epochs is not None:
        overrides["max_epochs"] = int(max_epochs)
        user_ids.append("max_epochs")
    if device is not None:
        overrides["device"] = device_expression(device)
        user_ids.append("device")
    for k, v in (sets or {}).items():
        overrides[k] = v
        user_ids.append(k)
    return overrides, user_ids


def check_training_data(wf: Any) -> dict[str, int]:
    """Resolve the train/validation datalists now (generating demo data if the manifest says so) and
    check every labelled case, so a missing file, an empty split, a label on another grid or with
    unknown classes is reported, with all offending cases, before any model is built."""
    counts = {}
    num_classes = int(parsed(wf, "num_classes")) if "num_classes" in wf.parser else None
    for split_id in ("train::datalist", "validate::datalist"):
        if split_id in wf.parser:
            entries = parsed(wf, split_id)
            counts[split_id.split("::")[0]] = len(entries)
            if num_classes:
                check_labelled_cases(entries, num_classes, split=split_id.split("::")[0])
    return counts


def prepare_transfer(
    wf: Any, source: str | Path | None, freeze: str, lr_scale: float, echo: Any = print
) -> None:
    """Load pretrained weights into the built network, freeze, and regroup the optimizer -- after the
    network exists and before the optimizer, LR scheduler and trainer are built from the config."""
    if not lr_scale > 0:
        raise Code.CONFIG_BAD_OVERRIDE(f"--pretrained-lr-scale must be > 0, got {lr_scale}")
    network = bare_network(wf)
    pretrained: set[str] = set()
    if source is not None:
        report = init_from(network, source)
        pretrained = set(report.loaded)
        for line in report.lines():
            echo(line)
    trainable, total = apply_freeze(network, freeze)
    echo(
        f"freeze {freeze}: {trainable:,} of {total:,} parameters trainable ({100 * trainable / max(total, 1):.1f}%)"
    )
    groups = regroup_optimizer(parsed(wf, "optimizer"), network, pretrained, lr_scale)
    echo("optimizer groups: " + ", ".join(f"{name} {n} tensors lr {lr:.2e}" for name, n, lr in groups))


def bare_network(wf: Any) -> Any:
    """The network itself, before a multi-process layer wraps it in ``DistributedDataParallel``: weights
    are loaded and frozen on it first, so DDP registers only the parameters that train."""
    return parsed(wf, "network_def") if "network_def" in wf.parser else unwrap(parsed(wf, "network"))


@dataclass(frozen=True)
class TrainOptions:
    """What ``medpipe train`` may change about a bundle's own training (everything else is its config)."""

    #: datalist to train on (config id ``manifest``); default: the bundle's
    manifest: str | Path | None = None
    max_epochs: int | None = None
    device: str | None = None
    #: ``--set ID=VALUE`` overrides (ids must exist in the configs)
    sets: Mapping[str, Any] = field(default_factory=dict)
    #: the run folder; default ``runs/<bundle>/<YYYYmmdd-HHMMSS>/`` under the current directory
    output: str | Path | None = None
    #: also apply the bundle's ``logging.conf``
    verbose: bool = False
    #: transfer learning (:mod:`medpipe.transfer`)
    init_from: str | Path | None = None
    freeze: str = "none"
    pretrained_lr_scale: float = 1.0
    #: the seed of every random draw (config id ``seed``; default the bundle's, 0) and torch's
    #: deterministic algorithms (id ``deterministic``): two runs with one seed give the same weights on CPU
    seed: int | None = None
    deterministic: bool = False
    #: continue the run in ``output`` from its last finished epoch (:mod:`medpipe.resume`)
    resume: bool = False
    #: ``"mlflow"``: MONAI's MLflow handlers log the run into ``<run folder>/mlruns.db``
    tracking: str | None = None
    #: the command line, recorded in run.json (the CLI sets it)
    command: str | None = None


def run_folder(bundle_name: str, output: str | Path | None = None) -> Path:
    """The folder of a new run (not created): ``output``, or ``runs/<bundle>/<time>/`` (``-2``... if taken)."""
    if output is not None:
        folder = Path(output).expanduser()
        if folder.exists() and any(folder.iterdir()):
            raise Code.CONFIG_BAD_OVERRIDE(
                f"--output {folder} is not empty: a run never writes over another; choose a new folder"
            )
        return folder.resolve()
    base = Path(RUNS_DIR) / bundle_name / time.strftime("%Y%m%d-%H%M%S")
    folder, n = base, 1
    while folder.exists():
        n += 1
        folder = base.with_name(f"{base.name}-{n}")
    return folder.resolve()


def agreed_run_folder(bundle_name: str, output: str | Path | None) -> Path:
    """:func:`run_folder`, decided by rank 0 and the same on every rank of a multi-process run (the
    default name holds the time, which the ranks would not read alike); rank 0's refusal on all ranks."""
    if world_size() < 2:
        return run_folder(bundle_name, output)
    decided: tuple[str | None, str | None, str | None] = (None, None, None)
    if is_main():
        try:
            decided = (str(run_folder(bundle_name, output)), None, None)
        except Exception as exc:  # noqa: BLE001 - sent to the other ranks, then raised on every rank
            coded = find_medpipe_error(exc)
            if coded is None:
                raise
            decided = (None, coded.code, coded.message)
    folder, code, message = broadcast_object(decided)
    if code is not None:
        raise Code[code](message)
    return Path(folder)


def train_in_processes(bundle: str | Path, options: TrainOptions, nproc: int, *, echo: Any = print) -> None:
    """``medpipe train --nproc N``: the same training in ``N`` processes under torchrun (this machine).

    The run folder is decided here, once, and given to every process with ``--output``."""
    if world_size() > 1:
        raise Code.TRAIN_BAD_NPROC("--nproc inside torchrun: torchrun already started the processes; drop --nproc")
    check_nproc(nproc, options.device)
    layout = BundleLayout.open(bundle)
    multi_gpu_config(layout.configs_dir)
    if not options.resume:
        options = replace(options, output=run_folder(layout.root.name, options.output))
    echo(f"starting {nproc} training processes with torchrun (torch.distributed.run, standalone)")
    launch(nproc, train_argv(bundle, options))


def train_argv(bundle: str | Path, options: TrainOptions) -> list[str]:
    """The ``medpipe train`` arguments that give ``options`` (what each torchrun process is started with)."""
    argv = ["--bundle", str(bundle)]
    for flag, value in (("--manifest", options.manifest), ("--max-epochs", options.max_epochs),
                        ("--device", options.device), ("--output", options.output), ("--init-from", options.init_from),
                        ("--seed", options.seed)):  # fmt: skip
        if value is not None:
            argv += [flag, str(value)]
    for key, value in options.sets.items():
        argv += ["--set", f"{key}={json.dumps(value)}"]
    if options.freeze != "none":
        argv += ["--freeze", options.freeze]
    if options.pretrained_lr_scale != 1.0:
        argv += ["--pretrained-lr-scale", repr(options.pretrained_lr_scale)]
    if options.tracking:
        argv += ["--tracking", options.tracking]
    argv += [flag for flag, on in (("--deterministic", options.deterministic), ("--resume", options.resume),
                                   ("--verbose", options.verbose)) if on]  # fmt: skip
    return argv


TRACKERS = ("mlflow",)


def tracking_settings(tracking: str | None, experiment: str, output_dir: str | Path) -> dict[str, Any] | None:
    """MONAI's MLflow settings for ``--tracking mlflow`` (None without): its handlers on the trainer
    (loss per iteration and epoch; at the end the config, the training curve and metrics as artifacts)
    and on the validator (its metrics), logging into the run folder's ``mlruns.db`` (a local SQLite
    store; ``mlflow ui --backend-store-uri sqlite:///RUN/mlruns.db`` shows it), experiment = bundle,
    run = run folder name."""
    if tracking is None:
        return None
    look_up(tracking, TRACKERS, what="--tracking", code=Code.TRAIN_TRACKING_UNAVAILABLE)
    try:
        import mlflow  # noqa: F401
        import sqlalchemy  # noqa: F401
    except ImportError as exc:
        raise Code.TRAIN_TRACKING_UNAVAILABLE(
            f"--tracking mlflow needs mlflow ({exc.name} is not installed): pip install 'medpipe[tracking]'"
        ) from None
    from monai.bundle.utils import DEFAULT_MLFLOW_SETTINGS

    out = Path(output_dir)
    settings = copy.deepcopy(DEFAULT_MLFLOW_SETTINGS)
    settings["configs"].update(experiment_name=experiment, run_name=out.name,
                               save_execute_config=str(out / "config.json"))  # fmt: skip
    settings["configs"]["trainer"]["artifacts"] = [str(out / n) for n in ("config.json", "training_curve.png",
                                                                          "training_metrics.json")]  # fmt: skip
    return settings


def train(bundle: str | Path, options: TrainOptions = TrainOptions(), *, echo: Any = print) -> dict[str, Any]:
    """Train ``bundle`` into a new run folder; returns the run record (also written as ``run.json``).

    The bundle's own files are never written: the checkpoint, metrics, curve, log, threshold and the
    resolved config go to the run folder, and ``medpipe promote`` puts a run's weights into the bundle.
    """
    tune_malloc()  # freed activations stay in the heap: 1.15x per step on CPU (medpipe.perf)
    layout = BundleLayout.open(bundle)
    processes = world_size()  # > 1 under torchrun: this is one rank of a DistributedDataParallel run
    main = is_main()
    layers = [multi_gpu_config(layout.configs_dir)] if processes > 1 else []
    if processes > 1:
        init_process_group(local_device(options.device))
    meta_version = json.loads(layout.metadata.read_text(encoding="utf-8")).get("version")
    transfer = {"init_from": None if options.init_from is None else str(options.init_from),
                "freeze": options.freeze or "none", "pretrained_lr_scale": options.pretrained_lr_scale}  # fmt: skip
    if options.resume:  # the run's own overrides, so the workflow is the one that was interrupted
        given = [name for name, value in (("--manifest", options.manifest), ("--max-epochs", options.max_epochs),
                 ("--device", options.device), ("--set", options.sets), ("--seed", options.seed),
                 ("--deterministic", options.deterministic), ("--init-from", options.init_from)) if value]  # fmt: skip
        if given:
            raise Code.TRAIN_RESUME_INVALID(
                f"--resume continues the run with the options it was started with (resume.json); drop {', '.join(given)}"
            )
        folder, overrides, user_ids, transfer = resumed_run(options.output, meta_version)
    else:
        sets = {**options.sets, **({"seed": options.seed} if options.seed is not None else {}),
                **({"deterministic": True} if options.deterministic else {})}  # fmt: skip
        overrides, user_ids = training_overrides(options.manifest, options.max_epochs, options.device, sets)
        folder = agreed_run_folder(layout.root.name, options.output)
    # Both ids a train config may save to point at the run folder, so no config can write into models/;
    # the other ranks of a multi-process run write nothing into it (their writers get a scratch folder).
    overrides["output_dir"] = overrides["ckpt_dir"] = rank_output_dir(str(folder))
    log: list[str] = []  # lines said before the run folder exists, written into its train.log after

    def say(line: str) -> None:
        if not main:
            return
        echo(line)
        if folder.is_dir():
            with open(folder / "train.log", "a", encoding="utf-8") as fp:
                fp.write("".join(f"{x}\n" for x in [*log, line]))
            log.clear()
        else:
            log.append(line)

    built = dict(overrides)  # what the workflow is built with; ``overrides`` is what resume.json keeps
    if processes > 1 and "device" in built:  # each rank its own GPU (cuda:LOCAL_RANK), or the CPU
        built["device"] = f"$distributed.local_device({'cpu' if 'cpu' in str(built['device']) else 'cuda'!r})"
    tracking = tracking_settings(options.tracking, layout.root.name, overrides["output_dir"])
    existed = folder.exists()
    try:  # everything up to here may be refused; a refused run leaves no folder behind
        wf = build_workflow(layout, "train", built, user_ids=[*user_ids], logging_conf=options.verbose,
                            layers=layers, tracking=tracking)  # fmt: skip
        counts = check_training_data(wf)
        short = {split: n for split, n in counts.items() if n < processes}
        if short:
            raise Code.TRAIN_BAD_NPROC(
                f"{processes} processes need at least {processes} cases in each split (each process takes its "
                f"share); this manifest has {', '.join(f'{n} {split}' for split, n in short.items())}"
            )
        if "crop_size" in wf.parser:  # a crop classifier: refuse a crop the network cannot take, now
            check_crop_size(bare_network(wf), parsed(wf, "crop_size"))
        if transfer["init_from"] is not None or transfer["freeze"] != "none" or transfer["pretrained_lr_scale"] != 1.0:
            prepare_transfer(wf, transfer["init_from"], transfer["freeze"], transfer["pretrained_lr_scale"], say)
        parsed(wf, "train::trainer")  # build every component now: config errors surface as CONFIG_INVALID
        checkpoint = resume_checkpoint(wf, folder)
        first = checkpoint.restore() + 1 if options.resume else 1
    except BaseException:
        if not existed and main:  # TensorBoard's writer or MLflow's config export may have made it
            shutil.rmtree(folder, ignore_errors=True)
        if not main:
            shutil.rmtree(overrides["output_dir"], ignore_errors=True)  # this rank's scratch folder
        raise
    # resuming a run whose every epoch is checkpointed trains nothing (ignite would start it over)
    finished = options.resume and first > int(parsed(wf, "max_epochs"))
    if not main:  # a rank > 0: trains and validates its share; rank 0 checkpoints and reports
        try:
            if not finished:
                wf.run()
        finally:
            wf.finalize()
            shutil.rmtree(overrides["output_dir"], ignore_errors=True)
        return {"rank_finished": True}
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint.attach()
    if not options.resume:
        atomic_write_text(folder / "config.json", json.dumps(wf.parser.get(), indent=1, default=str) + "\n")
        record_resume(folder, overrides, user_ids, meta_version, transfer)
    elif finished:
        say(f"{_display(folder)} has trained all its {first - 1} epochs: nothing to resume")
        if (folder / RUN_FILE).is_file():
            wf.finalize()
            return json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
    else:
        say(f"resuming {_display(folder)} at epoch {first} (from {CHECKPOINT_FILE})")
    say(
        f"training {layout.root.name}: {counts.get('train', '?')} training / "
        f"{counts.get('validate', '?')} validation cases, {parsed(wf, 'max_epochs')} epochs on "
        f"{parsed(wf, 'device')}{f' in {processes} processes (DDP)' if processes > 1 else ''}; run folder {_display(folder)}"
    )
    started = time.time()
    start = time.perf_counter()
    try:
        if not finished:
            wf.run()
    except Exception as e:  # noqa: BLE001 - only coded errors are translated; anything else is a bug
        coded = find_medpipe_error(e)
        if coded is not None:
            raise coded from e
        raise
    finally:
        wf.finalize()
    seconds = time.perf_counter() - start
    metrics_path = folder / "training_metrics.json"
    metrics: dict[str, Any] = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    metrics["wall_seconds"] = round(seconds, 1)
    atomic_write_text(metrics_path, json.dumps(metrics, indent=1))
    record = run_record(layout, wf, folder, metrics, started, seconds, options.command, overrides, user_ids)
    atomic_write_text(folder / RUN_FILE, json.dumps(record, indent=1) + "\n")
    best = metrics.get("best_metric")
    best_txt = f"{best:.4f} (epoch {metrics.get('best_epoch')})" if best is not None else "n/a"
    say(
        f"done in {seconds / 60:.1f} min: best {metrics.get('key_metric', 'metric')} {best_txt}; run folder "
        f"{_display(folder)} (model.pt, training_metrics.json, training_curve.png, train.log, config.json, run.json)"
    )
    say(
        "the bundle's shipped weights are unchanged; to ship this run: "
        f"medpipe promote --bundle {_display(layout.root)} --run {_display(folder)}"
    )
    return record


def _display(path: Path) -> str:
    """``path`` relative to the current directory when it lies inside it (what the user typed), else absolute."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def run_record(
    layout: BundleLayout,
    wf: Any,
    folder: Path,
    metrics: Mapping[str, Any],
    started: float,
    seconds: float,
    command: str | None,
    overrides: Mapping[str, Any],
    user_ids: Sequence[str],
) -> dict[str, Any]:
    """``run.json``: which bundle and version trained, with what, for how long, and to what result."""
    meta = json.loads(layout.metadata.read_text(encoding="utf-8"))
    weights = folder / "model.pt"
    return {
        "bundle": meta.get("name", layout.root.name),
        "bundle_folder": layout.root.name,
        "bundle_version": meta.get("version"),
        "medpipe": __version__,
        "command": command,
        "overrides": {k: str(overrides[k]) for k in user_ids},
        "manifest": str(parsed(wf, "manifest")),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "wall_seconds": round(seconds, 1),
        "key_metric": metrics.get("key_metric"),
        "best_metric": metrics.get("best_metric"),
        "best_epoch": metrics.get("best_epoch"),
        "epochs_completed": metrics.get("epochs_completed"),
        "seed": parsed(wf, "seed") if "seed" in wf.parser else None,
        "processes": world_size(),
        "deterministic": bool(parsed(wf, "deterministic")) if "deterministic" in wf.parser else None,
        "model_sha256": file_sha256(weights) if weights.is_file() else None,
    }
