"""Benchmark: epoch time of the hippocampus_mri bundle's training with and without MONAI's CacheDataset.

Both variants use the bundle's own ``train::preprocessing`` (load, orient, resample to 1 mm, z-score,
then the random augmentation) and ``train::datalist``; only the dataset class differs. CacheDataset runs
the deterministic head of the chain once (its build time is reported apart) and every epoch only the
random tail. Measured in one run, interleaved, on this machine:

* data epoch: iterate the DataLoader once (no model) -- the cost caching removes;
* training epoch: the same plus forward/backward/step of the bundle's network, loss and optimizer.

    python benchmarks/hippocampus_cache.py [--rounds 2] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from _common import REPO, cpu_snapshot, loadavg, machine_info, other_cpu


def build(cached: bool):
    from monai.data import CacheDataset, DataLoader, Dataset

    from medpipe.bundle.workflow import build_workflow, parsed

    wf = build_workflow(REPO / "bundles" / "hippocampus_mri", "train", {"device": "$torch.device('cpu')"})
    datalist = parsed(wf, "train::datalist")
    transform = parsed(wf, "train::preprocessing")
    t0 = time.perf_counter()
    if cached:  # the bundle's own dataset (CacheDataset, its cache_rate and copy_cache settings)
        dataset = parsed(wf, "train::dataset")
        if not isinstance(dataset, CacheDataset):
            raise SystemExit(f"train::dataset is a {type(dataset).__name__}, not a CacheDataset")
    else:
        dataset = Dataset(datalist, transform)
    build_s = time.perf_counter() - t0
    batch = int(parsed(wf, "train::dataloader").batch_size)
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=0)
    return wf, loader, build_s


def data_epoch(loader) -> float:
    t0 = time.perf_counter()
    for _ in loader:
        pass
    return time.perf_counter() - t0


def train_epoch(wf, loader) -> float:

    from medpipe.bundle.workflow import parsed

    network, loss_fn, optimizer = parsed(wf, "network"), parsed(wf, "loss"), parsed(wf, "optimizer")
    inferer = parsed(wf, "train::inferer")  # the bundle's forward pass (bf16 autocast where native)
    network.train()
    t0 = time.perf_counter()
    for batch in loader:
        optimizer.zero_grad()
        loss = loss_fn(inferer(batch["image"], network), batch["label"])
        loss.backward()
        optimizer.step()
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", dest="json_out")
    args = ap.parse_args()
    import torch

    torch.manual_seed(0)
    machine = machine_info(("numpy", "monai", "torch", "nibabel"))
    machine["torch_threads"] = torch.get_num_threads()
    print("== hippocampus_mri: epoch time with and without CacheDataset ==")
    print("machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()))
    variants = {name: build(name == "cached") for name in ("cached", "uncached")}
    for name, (_, loader, build_s) in variants.items():
        print(
            f"{name:>8}: {len(loader.dataset)} cases, batch {loader.batch_size}, dataset built in {build_s:.1f} s"
        )
    data_t: dict[str, list[float]] = {k: [] for k in variants}
    train_t: dict[str, list[float]] = {k: [] for k in variants}
    noise: dict[str, float] = {k: 0.0 for k in variants}
    for r in range(args.rounds):
        order = list(variants) if r % 2 == 0 else list(variants)[::-1]
        for name in order:
            wf, loader, _ = variants[name]
            c0 = cpu_snapshot()
            data_t[name].append(data_epoch(loader))
            train_t[name].append(train_epoch(wf, loader))
            noise[name] += other_cpu(c0, cpu_snapshot())
            print(
                f"  round {r + 1} {name:>8}: data epoch {data_t[name][-1]:6.2f} s, training epoch {train_t[name][-1]:6.2f} s"
            )
    med = {k: (float(np.median(data_t[k])), float(np.median(train_t[k]))) for k in variants}
    data_ratio = med["uncached"][0] / med["cached"][0]
    train_ratio = med["uncached"][1] / med["cached"][1]
    print(f"-- medians over {args.rounds} rounds (loadavg {loadavg()}; other processes' CPU: {noise}) --")
    for k, (d, t) in med.items():
        print(f"  {k:>8}: data epoch {d:6.2f} s   training epoch {t:6.2f} s")
    print(f"  data epoch     uncached / cached = {data_ratio:.1f}x  (target >= 3x)")
    print(f"  training epoch uncached / cached = {train_ratio:.2f}x")
    print(("PASS" if data_ratio >= 3 else "FAIL") + f": caching speeds the data epoch up {data_ratio:.1f}x")
    if args.json_out:
        payload = {"machine": machine, "data_epoch_s": data_t, "train_epoch_s": train_t, "noise_cpu_s": noise}
        with open(args.json_out, "w") as fp:
            json.dump(payload, fp, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
