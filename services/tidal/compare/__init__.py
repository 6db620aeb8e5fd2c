"""`tidal compare`: the same job once per consistency mode on a local cluster, and a report.

- `spec`: the compare spec (one job, the modes, the cluster, an optional worker kill);
- `runner`: runs the jobs one after the other on one `LocalCluster`, collects their numbers;
- `metrics`: parses /metrics pages, PromQL-style histogram quantiles;
- `results`: one run's numbers (from the job status and the metrics);
- `report`, `charts`: report.md, results.json and the PNG charts;
- `main`: the command itself.
"""
