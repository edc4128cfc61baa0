"""Transfer learning on VesselMNIST3D: training from scratch vs fine-tuning, same epoch budget.

Each arm trains a copy of ``bundles/vessel_aneurysm_mra`` (its own recipe, only ``--max-epochs``
changed) with ``medpipe train``, optionally ``--init-from`` a source bundle with a ``--freeze``
strategy, then scores the official test split with ``medpipe evaluate``. Prints a markdown table
(wall time, best validation AUC, test AUC / accuracy / F1 at the validation threshold).

    flock /tmp/medpipe-cpu.lock python benchmarks/transfer_vessel.py --epochs 6 \
        --source bundles/lung_nodule_malignancy_ct --out /tmp/transfer_vessel
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET = REPO / "bundles" / "vessel_aneurysm_mra"
MANIFEST = REPO / "data_manifests" / "vessel_aneurysm_mra.json"


def run(cmd: list[str], log: Path) -> float:
    start = time.perf_counter()
    with log.open("a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        subprocess.run(cmd, check=True, stdout=f, stderr=subprocess.STDOUT, cwd=REPO)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--source", default=str(REPO / "bundles" / "lung_nodule_malignancy_ct"))
    ap.add_argument("--out", default="/tmp/transfer_vessel")
    ap.add_argument("--arms", default="scratch,none,backbone,until:layer2")
    ap.add_argument("--pretrained-lr-scale", type=float, default=1.0)
    ap.add_argument("--tta", type=int, default=None, help="override the target's tta_symmetries (1 = none)")
    ap.add_argument(
        "--threads", type=int, default=None, help="torch threads per training (default: the recipe's)"
    )
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    medpipe = [sys.executable, "-m", "medpipe"]
    target = out / "target_configs"  # one snapshot of the recipe for every arm, even across invocations
    if not target.is_dir():
        shutil.copytree(TARGET / "configs", target)
    rows = []
    for arm in args.arms.split(","):
        name = arm.replace(":", "_")
        bundle, run_dir = out / name, out / f"{name}_run"
        shutil.rmtree(bundle, ignore_errors=True)
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.copytree(target, bundle / "configs")
        if args.tta is not None:  # same test-time augmentation for every arm
            common = json.loads((bundle / "configs" / "common.json").read_text())
            common["tta_symmetries"] = args.tta
            (bundle / "configs" / "common.json").write_text(json.dumps(common, indent=1))
        log = out / f"{name}.log"
        log.unlink(missing_ok=True)
        cmd = [
            *medpipe,
            "train",
            "--bundle",
            str(bundle),
            "--manifest",
            str(MANIFEST),
            "--max-epochs",
            str(args.epochs),
            "--output",
            str(run_dir),
        ]
        if args.threads:
            cmd += [
                "--set",
                f"initialize=['$monai.utils.set_determinism(seed=0)', '$torch.set_num_threads({args.threads})']",
            ]
        if arm != "scratch":
            cmd += ["--init-from", args.source, "--freeze", arm]
            if args.pretrained_lr_scale != 1.0:
                cmd += ["--pretrained-lr-scale", str(args.pretrained_lr_scale)]
        train_s = run(cmd, log)
        run(
            [*medpipe, "evaluate", "--bundle", str(bundle), "--manifest", str(MANIFEST), "--split", "test",
             "--weights", str(run_dir)],
            log,
        )  # fmt: skip
        record = json.loads((run_dir / "training_metrics.json").read_text())
        test = json.loads((bundle / "eval" / "test" / "summary.json").read_text())["metrics"]
        trainable = next(
            (ln.split(": ", 1)[1] for ln in log.read_text().splitlines() if ln.startswith("freeze ")), "all"
        )
        rows.append((arm, trainable, train_s, record["best_metric"], record["best_epoch"], test))
        print(f"{arm}: done ({train_s:.0f} s)", flush=True)
    print(f"\n{args.epochs} epochs per arm; source {Path(args.source).name}; target {TARGET.name} recipe\n")
    print("| arm | trainable | train s | best val AUC (epoch) | test AUC | test acc | test F1 |")
    print("|---|---|---|---|---|---|---|")
    for arm, trainable, secs, val, ep, t in rows:
        print(
            f"| {arm} | {trainable} | {secs:.0f} | {val:.4f} ({ep}) | {t['auc']:.4f} | {t['accuracy']:.4f} | {t['f1']:.4f} |"
        )
    (out / "results.json").write_text(json.dumps([
        {"arm": a, "trainable": tr, "train_seconds": round(s, 1), "best_val_auc": v, "best_epoch": e, "test": t}
        for a, tr, s, v, e, t in rows], indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
