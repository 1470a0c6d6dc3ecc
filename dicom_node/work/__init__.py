"""From a complete study to delivered results.

- ``routing``, ``route_match``: routes matched against the catalog, jobs created;
- ``jobs``, ``worker``, ``worker_pool``, ``model_cache``, ``package_check``: the job
  queue and the inference workers with their loaded models;
- ``outbox``: result files on disk until every destination has them;
- ``delivery_queue``, ``delivery``, ``commitment``: sending results, retries, storage
  commitment (here rather than in `dicom_node.net` because its report handler
  updates delivery rows);
- ``retention``, ``row_retention``: removing what nothing needs any more (files,
  then a finished study's rows);
- ``queue_report``: jobs and deliveries for ``dicom-node status``;
- ``findings``, ``results_report``: what each model found per series, kept on its job
  (shadow and live alike) and listed by ``dicom-node results``;
- ``drift_features``, ``drift``, ``drift_monitor``, ``drift_reference``: per-series
  features, the package's reference profile, window tests, the drift gauges, and
  building a profile by running a package on local (or validation) studies.
- ``backfill``, ``backfill_plan``, ``backfill_pace``, ``backfill_archive``: fetching past
  studies from the archive (C-GET, C-MOVE or WADO-RS; the series the routes want,
  paced) and routing them, resumably.

May import `dicom_node.net`, `dicom_node.intake`, `dicom_node.db`, the top-level
config, errors, logs and metrics, and `inference` and `sr_writer` through their
public API; never the service or the CLI.
"""
