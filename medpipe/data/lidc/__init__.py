"""LIDC-IDRI: the readers' XML (:mod:`.xml`), their marks as nodules with consensus masks
(:mod:`.nodules`), and ``medpipe manifest lidc`` (:mod:`.dataset`)."""
