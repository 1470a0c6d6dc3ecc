"""An arriving instance and its study: the spool, header reading, the catalog, completion.

- ``spool``: received files on disk, whole and durable;
- ``headers``: the fields the catalog and routing need, read without pixel data;
- ``catalog``: studies, series and instances recorded in the database;
- ``completion``: when a study is complete (quiet timer, or the peer's counts through
  the count source it is given).

May import `dicom_node.db` and the top-level config, errors, logs and metrics; never
`dicom_node.net` (the listener calls into intake, not the other way round),
`dicom_node.work`, the service or the CLI.
"""
