"""Benchmark: one training step of a bundle's network with glibc's default malloc vs ``medpipe.perf.tune_malloc``.

``medpipe train`` calls ``tune_malloc()`` first; this measures what that buys. Each variant runs in
its own fresh process (mallopt settings are per process and cannot be undone), the two alternate for
``--rounds`` rounds, and each process times ``--steps`` forward/backward/optimizer steps of the
bundle's network on a batch of the bundle's input size, under the bundle's bf16 setting. Reports the
median step time, the minor page faults per step (what the tuning removes) and the ratio.

    python benchmarks/malloc_tuning.py [--bundle bundles/vessel_aneurysm_mra] [--rounds 3] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from _common import REPO, cpu_snapshot, loadavg, machine_info, other_cpu

CHILD = r"""
import json, resource, statistics, sys, time
import torch
tuned = sys.argv[1] == "tuned"
if tuned:
    from medpipe.perf import tune_malloc
    assert tune_malloc(), "not glibc"
from medpipe.bundle.workflow import build_workflow, parsed
from medpipe.inferers import AutocastInferer
wf = build_workflow(sys.argv[2], "train", {"device": "$torch.device('cpu')"})
torch.set_num_threads(int(sys.argv[4]))
net = parsed(wf, "network")
inferer = parsed(wf, "train::inferer")
size = list(parsed(wf, "input_size") if "input_size" in wf.parser else parsed(wf, "roi_size"))
batch = int(parsed(wf, "batch_size"))
x = torch.rand(batch, 1, *size)
out_shape = inferer(x, net).shape
y = torch.randint(0, out_shape[1], (batch, *out_shape[2:]))
opt = torch.optim.AdamW(net.parameters(), 1e-4)
times = []
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(int(sys.argv[3]) + 1):
    if i == 1:
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(inferer(x, net).float(), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    times.append(time.perf_counter() - t)
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / int(sys.argv[3])
print(json.dumps({"step_ms": 1000 * statistics.median(times[1:]), "faults_per_step": faults,
                  "bf16": isinstance(inferer, AutocastInferer) and inferer.active(x.device)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default=str(REPO / "bundles" / "vessel_aneurysm_mra"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    results: dict[str, list[dict]] = {"default": [], "tuned": []}
    before = cpu_snapshot()
    for r in range(args.rounds):
        for variant in ("default", "tuned") if r % 2 == 0 else ("tuned", "default"):
            run = subprocess.run(
                [sys.executable, "-c", CHILD, variant, args.bundle, str(args.steps), str(args.threads)],
                capture_output=True, text=True, cwd=REPO, check=True,
            )  # fmt: skip
            results[variant].append(json.loads(run.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1} {variant:8s} {results[variant][-1]}", flush=True)
    noise = other_cpu(before, cpu_snapshot())
    med = {v: statistics.median(x["step_ms"] for x in rs) for v, rs in results.items()}
    faults = {v: statistics.median(x["faults_per_step"] for x in rs) for v, rs in results.items()}
    ratio = med["default"] / med["tuned"]
    print(f"\nbundle {args.bundle}  bf16 {results['tuned'][0]['bf16']}  threads {args.threads}")
    print(f"step, glibc default malloc: {med['default']:7.1f} ms   {faults['default']:9.0f} page faults/step")
    print(f"step, tune_malloc():        {med['tuned']:7.1f} ms   {faults['tuned']:9.0f} page faults/step")
    print(f"speed-up {ratio:.2f}x   (other processes used {noise:.1f} CPU s meanwhile; load {loadavg()})")
    if args.json:
        with open(args.json, "w") as fp:
            json.dump(
                {"machine": machine_info(("torch", "monai")), "results": results, "ratio": ratio},
                fp,
                indent=2,
            )


if __name__ == "__main__":
    main()
