"""Batch inference over DICOM series and NIfTI volumes (``medpipe infer``); see :mod:`medpipe.infer.run`."""
