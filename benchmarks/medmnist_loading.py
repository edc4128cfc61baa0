"""Benchmark: a MedMNIST 3D archive read directly from the npz vs. written as one NIfTI per case.

Both variants go through ``medpipe manifest medmnist`` (the npz variant with its default, the NIfTI
variant with ``--nifti-dir``) and then load every case of every split with the vessel_aneurysm_mra
bundle's own preprocessing (``LoadMedMNISTd`` -> float -> scale -> pad/crop), i.e. what its
CacheDataset does once before training and what evaluation does per case. Interleaved rounds, one run:

    python benchmarks/medmnist_loading.py [--npz ../shared/data/medmnist3d/vesselmnist3d.npz] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from _common import REPO, cpu_snapshot, loadavg, machine_info, other_cpu


def one_round(npz: Path, work: Path, nifti: bool) -> dict[str, float]:
    from medpipe.bundle.workflow import build_workflow, parsed
    from medpipe.data import medmnist
    from medpipe.data.manifest import load_split

    medmnist._arrays.cache_clear()
    out = work / ("nifti" if nifti else "npz")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    medmnist.medmnist_manifest(npz, out / "m.json", nifti_dir=out / "cases" if nifti else None)
    prepare = time.perf_counter() - t0
    wf = build_workflow(
        REPO / "bundles" / "vessel_aneurysm_mra",
        "inference",
        {"device": "$torch.device('cpu')", "manifest": str(out / "m.json")},
    )
    transform = parsed(wf, "preprocessing")
    entries = [e for s in ("training", "validation", "test") for e in load_split(out / "m.json", s)]
    t0 = time.perf_counter()
    for e in entries:
        transform({k: v for k, v in e.items() if k != "label"})
    load = time.perf_counter() - t0
    return {"prepare_s": prepare, "load_all_s": load, "cases": len(entries)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--npz", default=str(REPO.parent / "shared" / "data" / "medmnist3d" / "vesselmnist3d.npz")
    )
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    results: dict[str, list[dict[str, float]]] = {"npz": [], "nifti": []}
    before = cpu_snapshot()
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for name in ("npz", "nifti"):
                results[name].append(one_round(Path(args.npz), Path(tmp), name == "nifti"))
    other = other_cpu(before, cpu_snapshot())
    best = {k: {m: min(r[m] for r in v) for m in ("prepare_s", "load_all_s")} for k, v in results.items()}
    cases = results["npz"][0]["cases"]
    print(f"{cases} cases of {Path(args.npz).name}; best of {args.rounds} interleaved rounds")
    print(f"{'variant':<8} {'prepare s':>10} {'load all s':>11} {'ms/case':>8}")
    for k, b in best.items():
        print(f"{k:<8} {b['prepare_s']:10.2f} {b['load_all_s']:11.2f} {1000 * b['load_all_s'] / cases:8.2f}")
    print(
        f"npz direct is {best['nifti']['prepare_s'] / best['npz']['prepare_s']:.0f}x faster to prepare and "
        f"{best['nifti']['load_all_s'] / best['npz']['load_all_s']:.1f}x faster to load"
    )
    print(f"other processes used {other:.0%} of the CPU meanwhile; load average {loadavg()}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"machine": machine_info(("numpy", "monai", "nibabel")), "rounds": results, "best": best},
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
