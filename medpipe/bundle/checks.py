"""``medpipe check``: a bundle against MONAI's own bundle tools, before anyone trains or ships it.

1. the config ids MONAI's bundle specification requires for the train and inference workflows
   (``monai.bundle.properties``; ``BUNDLE_MISSING_PROPERTIES``);
2. ``verify_net_in_out``: the network against ``metadata.json`` (``BUNDLE_NET_IO_MISMATCH``);
3. a crop classifier (``crop_size`` in its configs): a zero crop of ``crop_size`` passes through the
   network and gives one score per class (``BUNDLE_CROP_SIZE_INVALID``).
"""

from __future__ import annotations

from pathlib import Path

from monai.bundle import ConfigParser

from medpipe.bundle.classifier import check_crop_size
from medpipe.bundle.export import verify_network
from medpipe.bundle.layout import BundleLayout
from medpipe.bundle.workflow import missing_properties
from medpipe.errors import Code


def check_bundle(bundle: str | Path) -> list[str]:
    """Run the checks of the module docstring; returns one line per passed check, raises at the first failure."""
    layout = BundleLayout.open(bundle)
    passed = []
    parser = ConfigParser()
    for workflow in ("train", "inference"):
        parser = ConfigParser()
        parser.read_config([str(p) for p in layout.workflow_configs(workflow)])
        missing = missing_properties(parser, "train" if workflow == "train" else "infer")
        if missing:
            raise Code.BUNDLE_MISSING_PROPERTIES(
                f"{workflow} workflow lacks the MONAI bundle properties {missing}"
            )
        passed.append(f"{workflow}: required MONAI bundle properties present")
    verify_network(layout.root)
    passed.append("verify_net_in_out: network input/output match metadata.json")
    if (
        "crop_size" in parser
    ):  # the inference parser: the crop medpipe infer cuts must pass through the network
        parser["bundle_root"] = str(layout.root)
        crop = parser.get_parsed_content("crop_size")
        check_crop_size(
            parser.get_parsed_content("network_def"), crop, int(parser.get_parsed_content("num_classes"))
        )
        passed.append(f"crop_size {list(crop)}: the network takes it and returns one score per class")
    return passed
