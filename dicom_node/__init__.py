"""The DICOM AI node service, grouped by stage of the data flow.

``net`` (DICOM to and from peers), ``intake`` (an arriving instance and its study),
``work`` (from a complete study to delivered results) and ``db`` (the schema and the
work queues' rules); the service, ``roles``, ``cli``, config, logging, metrics and
errors at the top. Imports run downhill: cli, service, roles, work, net, intake, db.
"""
