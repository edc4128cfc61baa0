"""A bundle opened for prediction, once: the path that is scored is the path that ships.

:meth:`BundleModel.open` is the one place that resolves the weights (the shipped ``models/model.pt``
unless told otherwise, ``BUNDLE_NO_WEIGHTS`` when absent), builds the bundle's own inference
components from ``common`` + ``inference`` configs (``preprocessing``, ``network``, ``inferer``,
``postprocessing`` without its ``SaveImage``), loads the weights weights-only into the network in eval
mode and reads the metadata (name, version, class names, input modality, output kind). ``medpipe
infer``, ``medpipe evaluate`` (segmentation and classification), ``medpipe explain`` and
``infer --classifier`` all predict through it:

* :meth:`BundleModel.segment` -- one :class:`~medpipe.data.images.Image` in, its label mask on the
  image's own grid out. The image is handed to the bundle's preprocessing (minus its loader) as the
  float32 ``MetaTensor`` with RAS affine that ``LoadImaged`` would give; the prediction goes back to
  the input grid through the bundle's ``Invertd`` (computed slab by slab, :mod:`medpipe.bundle.inversion`).
* :meth:`BundleModel.probabilities` -- class probabilities of manifest entries (a classifier bundle's
  preprocessing loads them), batched, with the bundle's inferer (e.g. test-time augmentation).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, LoadImage, LoadImaged, SaveImage, SaveImaged

from medpipe.backends import run_on_backend
from medpipe.bundle.inversion import (
    SLAB_VOXELS,
    float32_resampling,
    invert_in_slabs,
    lean_split,
    softmax_before,
    to_mask,
)
from medpipe.bundle.layout import BundleLayout
from medpipe.bundle.weights import Weights, load_weights, resolve_weights
from medpipe.bundle.workflow import build_workflow, device_expression, parsed
from medpipe.data.images import Image
from medpipe.data.manifest import load_manifest
from medpipe.data.medmnist import LoadMedMNISTd
from medpipe.errors import Code
from medpipe.operating_point import KeepLesionsd

#: Transforms that read files: dropped when an image already in memory is handed over.
LOADERS = (LoadImage, LoadImaged, LoadMedMNISTd)
SEGMENTATION, CLASSIFICATION = "segmentation", "classification"
#: Label names meaning an abnormality: a bundle segmenting one is a lesion (detection) bundle, and its
#: DICOM SEG category is "Morphologically Abnormal Structure".
LESION_NAMES = {"nodule", "lesion", "tumor", "tumour", "mass", "aneurysm", "neoplasm", "metastasis", "cyst"}


def output_kind(metadata: Mapping[str, Any]) -> str:
    """``classification`` when ``network_data_format.outputs.pred`` is class probabilities, else segmentation."""
    pred = metadata.get("network_data_format", {}).get("outputs", {}).get("pred", {})
    return CLASSIFICATION if pred.get("type") == "probabilities" else SEGMENTATION


def is_classifier(bundle: str | Path | BundleLayout) -> bool:
    """True when the bundle's metadata declares its output ``pred`` as class probabilities."""
    layout = bundle if isinstance(bundle, BundleLayout) else BundleLayout.open(bundle)
    return output_kind(json.loads(layout.metadata.read_text(encoding="utf-8"))) == CLASSIFICATION


def prediction_overrides(manifest: str | Path | None = None, device: str | None = None) -> dict[str, Any]:
    """Overrides of a bundle's inference config for ``--manifest`` and ``--device``."""
    overrides: dict[str, Any] = {}
    if manifest is not None:
        overrides["manifest"] = str(load_manifest(manifest).path)
    if device is not None:
        overrides["device"] = device_expression(device)
    return overrides


def predict_probabilities(
    entries: Sequence[Mapping[str, Any]],
    preprocessing: Callable[[dict[str, Any]], dict[str, Any]],
    network: torch.nn.Module,
    inferer: Any,
    device: Any,
    perturb: Callable[[Any, int], Any] | None = None,
    batch_size: int = 32,
) -> np.ndarray:
    """Class probabilities (N, K) of ``entries``; ``perturb(image, index)`` alters each preprocessed image.

    The softmax of the inferer's output: an inferer returning log-probabilities (the TTA inferers of
    :mod:`medpipe.tta`) gives back exactly its averaged probabilities.
    """
    probs = []
    was_training = network.training
    network.eval()
    try:
        for start in range(0, len(entries), batch_size):
            images = []
            for i, entry in enumerate(entries[start : start + batch_size], start):
                image = preprocessing({k: v for k, v in entry.items() if k != "label"})["image"]
                images.append(perturb(image, i) if perturb is not None else image)
            x = torch.stack([torch.as_tensor(im).float() for im in images]).to(device)
            with torch.no_grad():
                probs.append(torch.softmax(inferer(x, network).float(), dim=1).cpu().numpy())
    finally:
        network.train(was_training)
    return np.concatenate(probs)


@dataclass
class BundleModel:
    """A bundle's inference components with its weights loaded; see the module docstring."""

    layout: BundleLayout
    workflow: Any = field(repr=False)
    metadata: dict[str, Any] = field(repr=False)
    weights: Weights
    network: torch.nn.Module = field(repr=False)
    #: the inference components (None for a ``crop`` bundle, which has only common definitions)
    preprocessing: Compose | None = field(repr=False)
    inferer: Any = field(repr=False)
    postprocessing: list[Any] = field(repr=False)
    device: torch.device
    #: voxels of the input grid resampled at once when the prediction is inverted
    slab_voxels: int = SLAB_VOXELS
    #: where the network runs (:mod:`medpipe.backends`): backend, precision, origin of its ONNX file
    backend: dict[str, Any] = field(default_factory=lambda: {"backend": "torch"})
    #: the autograd mode predictions run in (``torch.no_grad``; ``torch.inference_mode`` measures the same)
    grad_mode: Callable[[], Any] = field(default=torch.no_grad, repr=False)

    @classmethod
    def open(
        cls,
        bundle: str | Path | BundleLayout,
        *,
        weights: str | Path | None = None,
        manifest: str | Path | None = None,
        device: str | None = None,
        overrides: Mapping[str, Any] | None = None,
        user_ids: Sequence[str] = (),
        workflow: str = "inference",
        backend: str | None = None,
        precision: str | None = None,
    ) -> BundleModel:
        """Open ``bundle`` for prediction with ``weights`` (default: its shipped ``models/model.pt``).

        ``workflow="crop"`` opens only ``configs/common.json`` (a crop classifier for ``infer --classifier``).
        ``backend`` (``torch``, ``onnxruntime``, ``openvino``) and ``precision`` (``auto``, ``fp32``, ``bf16``;
        default: the bundle's inferer's) choose where and how the network runs (:mod:`medpipe.backends`).
        """
        layout = bundle if isinstance(bundle, BundleLayout) else BundleLayout.open(bundle)
        resolved = resolve_weights(layout, weights)
        merged = {**prediction_overrides(manifest, device), **dict(overrides or {})}
        wf = build_workflow(layout, workflow, merged, user_ids=user_ids)
        dev = parsed(wf, "device") if "device" in wf.parser else torch.device("cpu")
        network = parsed(wf, "network") if "network" in wf.parser else parsed(wf, "network_def").to(dev)
        load_weights(network, resolved.path)
        network.eval()
        post = parsed(wf, "postprocessing") if "postprocessing" in wf.parser else None
        steps = post.transforms if isinstance(post, Compose) else list(post or [])
        for step in steps:
            if isinstance(step, KeepLesionsd):  # the operating point of these weights, not the config's ckpt_dir
                step.weights_dir = resolved.path.parent
        inferer = parsed(wf, "inferer") if "inferer" in wf.parser else None
        metadata = json.loads(layout.metadata.read_text(encoding="utf-8"))
        runner, inferer, backend_info = run_on_backend(
            network, inferer, layout, resolved, metadata, wf, backend or "torch", precision
        )
        return cls(
            layout=layout,
            workflow=wf,
            metadata=metadata,
            weights=resolved,
            network=runner,
            preprocessing=parsed(wf, "preprocessing") if "preprocessing" in wf.parser else None,
            inferer=inferer,
            postprocessing=[t for t in steps if not isinstance(t, (SaveImaged, SaveImage))],
            device=dev,
            backend=backend_info,
        )

    # --- what the bundle says about itself
    @property
    def name(self) -> str:
        return str(self.metadata.get("name", self.layout.root.name))

    @property
    def version(self) -> str:
        return str(self.metadata.get("version", "unknown"))

    @property
    def kind(self) -> str:
        return output_kind(self.metadata)

    @property
    def modality(self) -> str | None:
        modality = (
            self.metadata.get("network_data_format", {}).get("inputs", {}).get("image", {}).get("modality")
        )
        return str(modality).upper() if modality else None

    @property
    def class_names(self) -> dict[int, str]:
        """``{class index: name}`` from ``channel_def`` of the output (``class<k>`` where it is silent)."""
        channel_def = self.metadata.get("network_data_format", {}).get("outputs", {}).get("pred", {})
        channel_def = channel_def.get("channel_def") or {}
        n = int(self.get("num_classes", len(channel_def)))
        return {c: str(channel_def.get(str(c), f"class{c}")) for c in range(n)}

    @property
    def finds_lesions(self) -> bool:
        """A segmenter of lesions (a foreground class named nodule, lesion, tumour...): scored as a detector too."""
        names = [n.strip().lower() for c, n in self.class_names.items() if c != 0]
        return self.kind == SEGMENTATION and any(n in LESION_NAMES for n in names)

    def get(self, config_id: str, default: Any = None) -> Any:
        """A parsed config id of the inference workflow, or ``default`` when the bundle lacks it."""
        return parsed(self.workflow, config_id) if config_id in self.workflow.parser else default

    def describe_weights(self) -> str:
        return self.weights.describe(self.layout, self.version)

    # --- segmentation
    @property
    def in_memory_preprocessing(self) -> Compose:
        """The bundle's preprocessing without its loader (the same transform objects, so ``Invertd`` inverts them)."""
        steps = [t for t in self.preprocessing.flatten().transforms if not isinstance(t, LOADERS)]
        return Compose(steps)

    def prepare(self, image: Image, name: str = "image") -> dict[str, Any]:
        """``{"image": network input}``: ``image`` through the bundle's preprocessing, handed over as its
        loader would give it (a float32 ``MetaTensor`` with RAS affine, channel-first when the loader adds
        the channel)."""
        affine = image.affine_ras
        array = torch.from_numpy(np.asarray(image.array, dtype=np.float32))  # as LoadImage: float32
        channel = self._loader_adds_channel()
        tensor = MetaTensor(
            array[None] if channel else array,
            affine=torch.as_tensor(affine),
            meta={
                "original_affine": affine.copy(),
                "spatial_shape": np.asarray(image.array.shape),
                "space": "RAS",
                "original_channel_dim": "no_channel" if channel else float("nan"),
                "filename_or_obj": name,
            },
        )
        return self.in_memory_preprocessing({"image": tensor})

    def _loader_adds_channel(self) -> bool:
        """Whether the bundle's first loader (``LoadImage(d)``, ``LoadMedMNISTd``) makes its output channel-first."""
        loaders = [t for t in self.preprocessing.flatten().transforms if isinstance(t, LOADERS)]
        if not loaders:
            return False
        inner = getattr(loaders[0], "_loader", None) or getattr(loaders[0], "loader", None) or loaders[0]
        return bool(getattr(inner, "ensure_channel_first", False))

    def segment(self, image: Image, name: str = "image") -> np.ndarray:
        """Label mask (uint8, [i, j, k]) of ``image`` on its own grid."""
        return self.segment_with_scores(image, name, scores=False)[0]

    def segment_with_scores(
        self, image: Image, name: str = "image", *, scores: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The mask and, with ``scores``, each voxel's highest foreground probability (uint8, 1/255 steps)
        on the same grid: the raw material of a lesion's score. ``None`` when the bundle's post-processing
        is not the voxel-wise kind whose probabilities can be kept (see :mod:`medpipe.bundle.inversion`).
        The mask then holds every candidate: a ``KeepLesionsd`` step is left to the caller, which applies
        the operating point to the lesions it measures (``medpipe infer`` lists the rest as candidates)."""
        if self.kind != SEGMENTATION:
            raise Code.BUNDLE_NOT_SEGMENTER(
                f"bundle {self.layout.root.name} outputs class probabilities; segmenting needs a segmentation bundle"
            )
        shape = tuple(image.array.shape)
        score_map = None
        # no autograd anywhere: the network and every post-processing step (inference_mode is the
        # alternative benchmarks/infer_speed.py measures; the lung restriction writes into its prediction)
        with float32_resampling(self.preprocessing.flatten().transforms), self.grad_mode():
            data = self.prepare(image, name)
            logits = self.inferer(data["image"][None].to(self.device), self.network)
            data["pred"] = logits[0].cpu()
            del logits
            split = lean_split(self.postprocessing)
            if split is None:
                for transform in self.postprocessing:  # the bundle's own post-processing, minus saving
                    data = transform(data)
                mask = to_mask(data.pop("pred"))
            else:
                before, after = split
                for transform in before:  # e.g. Activationsd, on the (small) preprocessed grid
                    data = transform(data)
                score_map = np.zeros(shape, dtype=np.uint8) if scores else None
                mask = invert_in_slabs(
                    data["pred"], data["image"].affine, image.affine_ras, shape, after, self.slab_voxels, score_map,
                    probabilities=softmax_before(before),
                )
        del data
        if mask.shape != shape:
            raise Code.BUNDLE_GRID_MISMATCH(
                f"{name}: the bundle's post-processing gives {mask.shape}, the input is {shape}; its inference "
                "postprocessing must invert the preprocessing (Invertd)"
            )
        return mask, score_map

    # --- classification
    def probabilities(
        self,
        entries: Sequence[Mapping[str, Any]],
        *,
        inferer: Any = None,
        perturb: Callable[[Any, int], Any] | None = None,
        batch_size: int = 32,
    ) -> np.ndarray:
        """Class probabilities (N, K) of manifest ``entries`` with the bundle's (or another) inferer."""
        return predict_probabilities(
            entries,
            self.preprocessing,
            self.network,
            inferer or self.inferer,
            self.device,
            perturb,
            batch_size,
        )
