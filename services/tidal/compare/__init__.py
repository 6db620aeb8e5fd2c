"""`tidal compare`: the same job once per consistency mode and seed on a local cluster, and a report.

- `spec`: the compare spec (one job, the modes, the seeds, the cluster, an optional worker kill);
- `runner`: runs the jobs one after the other on one `LocalCluster`, collects their numbers;
- `metrics`: parses /metrics pages, PromQL-style histogram quantiles;
- `results`: one run's numbers (from the job status and the metrics);
- `store`: each finished run saved in the report folder, so an interrupted comparison resumes;
- `aggregate`: each metric over the seeds (mean, min-max, t-interval), the loss curves' bands;
- `provenance`: the command and the code version a report comes from;
- `report`, `charts`: report.md, results.json, runs.csv and the PNG charts;
- `tables`, `seed_text`, `sections`, `auto_section`: report.md's tables, its text on the seeds,
  its other prose (column notes, chart captions, kills), its section on mode auto;
- `main`: the command itself.
"""
