"""``medpipe evaluate`` for classifier bundles: class probabilities on a labelled split, scored.

A bundle is a classifier when its ``metadata.json`` declares the output ``pred`` as
``"type": "probabilities"`` (:func:`is_classifier`). The bundle's own inference components do the
work (``preprocessing``, ``network``, ``inferer`` -- e.g. :class:`medpipe.tta.CubeSymmetryInferer` --
of common + inference configs, weights ``models/model.pt`` loaded weights-only); the decision
threshold on P(class 1) of a binary classifier is the one chosen on the validation split at the end
of training and stored in ``models/threshold.json`` (0.5 without it); multi-class decisions are argmax.
Metrics are scikit-learn's: ROC AUC, accuracy, F1, precision, recall (sensitivity), specificity and the
confusion matrix. Writes ``predictions.csv`` (case, label, probabilities, prediction) and
``summary.json`` to ``<bundle>/eval/<split>/`` and prints a table.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medpipe.atomic import atomic_write_text
from medpipe.bundle.layout import BundleLayout
from medpipe.bundle.workflow import build_workflow, inference_overrides, parsed
from medpipe.data.checks import check_labelled_cases
from medpipe.data.manifest import load_manifest
from medpipe.errors import Code

THRESHOLD_FILE = "threshold.json"


def is_classifier(bundle: str | Path | BundleLayout) -> bool:
    """True when the bundle's metadata declares its output ``pred`` as class probabilities."""
    layout = bundle if isinstance(bundle, BundleLayout) else BundleLayout.open(bundle)
    meta = json.loads(layout.metadata.read_text(encoding="utf-8"))
    pred = meta.get("network_data_format", {}).get("outputs", {}).get("pred", {})
    return pred.get("type") == "probabilities"


def choose_threshold(prob: np.ndarray, label: np.ndarray) -> float:
    """Threshold on P(class 1) with the highest accuracy; among equally good ones, the middle one."""
    values = np.unique(prob)
    candidates = (
        np.concatenate([[0.0], (values[:-1] + values[1:]) / 2, [1.0]]) if values.size else np.array([0.5])
    )
    acc = np.array([((prob >= t).astype(int) == label).mean() for t in candidates])
    best = np.flatnonzero(acc == acc.max())
    return float(candidates[best[len(best) // 2]])


def figures(
    prob: np.ndarray, label: np.ndarray, threshold: float | None = None
) -> tuple[dict[str, Any], np.ndarray]:
    """Figures for probabilities ``prob`` (N, K) and labels (N,), and the predicted classes."""
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        f1_score,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    k = prob.shape[1]
    if k == 2:
        thr = 0.5 if threshold is None else float(threshold)
        pred = (prob[:, 1] >= thr).astype(int)
        auc = roc_auc_score(label, prob[:, 1]) if len(np.unique(label)) == 2 else float("nan")
        average = "binary"
    else:
        thr = None
        pred = prob.argmax(1)
        present = np.unique(label)
        auc = (
            roc_auc_score(label, prob, multi_class="ovr", labels=list(range(k)))
            if len(present) == k
            else float("nan")
        )
        average = "macro"
    cm = confusion_matrix(label, pred, labels=list(range(k)))
    out: dict[str, Any] = {
        "auc": float(auc),
        "accuracy": float(accuracy_score(label, pred)),
        "f1": float(f1_score(label, pred, average=average, zero_division=0)),
        "precision": float(precision_score(label, pred, average=average, zero_division=0)),
        "recall": float(recall_score(label, pred, average=average, zero_division=0)),
        "threshold": thr,
        "confusion_matrix": cm.tolist(),
        "n": int(len(label)),
    }
    if k == 2:
        tn, fp = cm[0]
        out["specificity"] = float(tn / (tn + fp)) if tn + fp else float("nan")
    return out, pred


def predict(
    entries: Sequence[dict[str, Any]],
    preprocessing: Callable[[dict[str, Any]], dict[str, Any]],
    network: Any,
    inferer: Any,
    device: Any,
    perturb: Callable[[Any, int], Any] | None = None,
    batch_size: int = 32,
) -> np.ndarray:
    """Class probabilities (N, K) of ``entries``; ``perturb(image, index)`` alters each preprocessed image."""
    import torch

    probs = []
    network.eval()
    for start in range(0, len(entries), batch_size):
        images = []
        for i, entry in enumerate(entries[start : start + batch_size], start):
            image = preprocessing({k: v for k, v in entry.items() if k != "label"})["image"]
            images.append(perturb(image, i) if perturb is not None else image)
        x = torch.stack([torch.as_tensor(im).float() for im in images]).to(device)
        with torch.no_grad():
            probs.append(torch.softmax(inferer(x, network).float(), dim=1).cpu().numpy())
    return np.concatenate(probs)


def load_classifier(
    bundle: str | Path, *, manifest: str | Path | None = None, device: str | None = None
) -> dict[str, Any]:
    """The bundle's inference components with weights loaded, and its stored threshold."""
    from medpipe.bundle.export import load_state_dict

    layout = BundleLayout.open(bundle)
    wf = build_workflow(layout, "inference", inference_overrides(manifest, device))
    network = parsed(wf, "network")
    weights = layout.model_pt
    if not weights.is_file():
        raise Code.BUNDLE_NO_WEIGHTS(f"{weights} does not exist: train the bundle first")
    network.load_state_dict(load_state_dict(weights))
    network.eval()
    thr_file = Path(parsed(wf, "ckpt_dir")) / THRESHOLD_FILE
    threshold = json.loads(thr_file.read_text())["threshold"] if thr_file.is_file() else None
    return {
        "layout": layout,
        "workflow": wf,
        "manifest": load_manifest(parsed(wf, "manifest")),
        "num_classes": int(parsed(wf, "num_classes")),
        "preprocessing": parsed(wf, "preprocessing"),
        "network": network,
        "inferer": parsed(wf, "inferer"),
        "device": parsed(wf, "device"),
        "threshold": threshold,
    }


def labelled_entries(clf: dict[str, Any], split: str) -> tuple[list[dict[str, Any]], np.ndarray]:
    entries = clf["manifest"].split(split, required_keys=("image", "label"))
    check_labelled_cases(entries, clf["num_classes"], split=split)
    return entries, np.array([int(e["label"]) for e in entries])


def case_id(entry: dict[str, Any]) -> str:
    if "npz_index" in entry:
        return f"{entry.get('npz_split', '')}/{entry['npz_index']}"
    return Path(str(entry["image"])).name.split(".nii")[0]


def evaluate_classifier(
    bundle: str | Path,
    *,
    manifest: str | Path | None = None,
    split: str = "test",
    output: str | Path | None = None,
    device: str | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Score classifier ``bundle`` on ``split``; see the module docstring."""
    clf = load_classifier(bundle, manifest=manifest, device=device)
    entries, label = labelled_entries(clf, split)
    layout = clf["layout"]
    echo(f"evaluating {layout.root.name} on split '{split}' ({len(entries)} cases) on {clf['device']}")
    start = time.perf_counter()
    prob = predict(entries, clf["preprocessing"], clf["network"], clf["inferer"], clf["device"])
    seconds = time.perf_counter() - start
    result, pred = figures(prob, label, clf["threshold"])
    out_dir = Path(output) if output else layout.root / "eval" / split
    k = prob.shape[1]
    lines = ["case,label," + ",".join(f"prob_{c}" for c in range(k)) + ",prediction"]
    for e, y, p, d in zip(entries, label, prob, pred, strict=True):
        lines.append(f"{case_id(e)},{y}," + ",".join(f"{v:.6f}" for v in p) + f",{d}")
    atomic_write_text(out_dir / "predictions.csv", "\n".join(lines) + "\n")
    summary = {
        "bundle": layout.root.name,
        "split": split,
        "manifest": str(clf["manifest"].path),
        "cases": len(entries),
        "inferer": type(clf["inferer"]).__name__
        + (f"(n={clf['inferer'].n})" if hasattr(clf["inferer"], "n") else ""),
        "threshold_source": THRESHOLD_FILE if clf["threshold"] is not None else "default 0.5 / argmax",
        "seconds": round(seconds, 1),
        "metrics": result,
    }
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=1) + "\n")
    thr = "argmax" if result["threshold"] is None else f"P(1) >= {result['threshold']:.3f}"
    echo(f"{'AUC':>7} {'acc':>7} {'F1':>7} {'prec':>7} {'recall':>7}  decision")
    echo(
        f"{result['auc']:7.4f} {result['accuracy']:7.4f} {result['f1']:7.4f} {result['precision']:7.4f} "
        f"{result['recall']:7.4f}  {thr}"
    )
    echo("confusion matrix (rows = label, columns = prediction): " + json.dumps(result["confusion_matrix"]))
    echo(
        f"{len(entries)} cases in {seconds:.0f} s; predictions {out_dir / 'predictions.csv'}, summary {out_dir / 'summary.json'}"
    )
    return summary


class ThresholdOnValidation:
    """Trainer handler: when training completes, load the best checkpoint, predict the validation
    split with the inference ``inferer`` and store the accuracy-maximising threshold in
    ``<output_dir>/threshold.json`` with the validation figures."""

    def __init__(
        self,
        network: Any,
        datalist: Sequence[dict[str, Any]],
        preprocessing: Callable[[dict[str, Any]], dict[str, Any]],
        inferer: Any,
        output_dir: str | Path,
        checkpoint: str | Path | None = None,
        device: Any = "cpu",
    ) -> None:
        self.network, self.datalist, self.preprocessing = network, datalist, preprocessing
        self.inferer, self.device = inferer, device
        self.output_dir = Path(output_dir)
        self.checkpoint = Path(checkpoint) if checkpoint else self.output_dir / "model.pt"

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Any = None) -> dict[str, Any]:
        from medpipe.bundle.export import load_state_dict

        if self.checkpoint.is_file():
            self.network.load_state_dict(load_state_dict(self.checkpoint))
        label = np.array([int(e["label"]) for e in self.datalist])
        prob = predict(self.datalist, self.preprocessing, self.network, self.inferer, self.device)
        if prob.shape[1] != 2:
            return {}
        thr = choose_threshold(prob[:, 1], label)
        result, _ = figures(prob, label, thr)
        record = {
            "threshold": round(thr, 6),
            "positive_class": 1,
            "criterion": "highest accuracy on the validation split (middle of the best range)",
            "inferer": type(self.inferer).__name__
            + (f"(n={self.inferer.n})" if hasattr(self.inferer, "n") else ""),
            "validation": result,
        }
        atomic_write_text(self.output_dir / THRESHOLD_FILE, json.dumps(record, indent=1) + "\n")
        from tqdm import tqdm

        tqdm.write(
            f"threshold {thr:.3f} chosen on validation (AUC {result['auc']:.4f}, accuracy {result['accuracy']:.4f}) "
            f"-> {self.output_dir / THRESHOLD_FILE}"
        )
        return record
