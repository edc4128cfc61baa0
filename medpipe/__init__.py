"""medpipe: DICOM-aware MONAI bundles for 3D CT and MRI.

MONAI does the maths (transforms, networks, losses, inferers, metrics, engines, bundle parsing);
medpipe adds what MONAI does not have: DICOM series handling, data manifests, bundle checks and
assembly, batch orchestration, reports and the ``medpipe`` command line.
"""

__version__ = "0.2.0"


def quiet_third_party_logs() -> None:
    """Silence start-up notices of optional GPU codecs that CPU users cannot act on."""
    import logging
    import warnings

    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader")
