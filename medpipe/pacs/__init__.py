"""Studies from a PACS and results back to it: DICOMweb (QIDO-RS, WADO-RS, STOW-RS) through dicomweb-client.

``config`` (where the archive is, credentials, TLS), ``archive`` (the requests, with retries and coded
errors), ``dimse`` (the same over C-FIND/C-MOVE/C-STORE with pynetdicom), ``records`` (study and push
records in the output folder), ``run`` (``medpipe infer --source``).
"""
