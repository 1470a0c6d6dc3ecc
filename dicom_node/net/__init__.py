"""Talking DICOM to peers: the listener and its guards, the sender, store outcomes.

- ``scp``: the listener (C-ECHO, C-STORE into the spool and the catalog), with the
  guards hostile input meets before a byte is stored (``association_gate``,
  ``association_request``, ``connection_limits``, ``pdu_guard``, ``transfer_space``,
  ``transfer_cleanup``);
- ``scu``: calling a peer (C-ECHO, C-STORE of files, C-FIND of expected counts);
- ``query_retrieve``: C-FIND of studies and series, C-GET and C-MOVE into the node
  (the backfill);
- ``store_outcome``: what a C-STORE came to (stored, transient, permanent);
- ``pynetdicom_internals``: the one module that touches pynetdicom's private parts.

May import `dicom_node.intake` (the listener stores into the spool and the catalog),
`dicom_node.db`, and the top-level config, errors, logs and metrics; never
`dicom_node.work`, the service or the CLI.
"""
