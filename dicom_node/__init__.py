"""The DICOM AI node service: listener, queue, workers, delivery, CLI."""
