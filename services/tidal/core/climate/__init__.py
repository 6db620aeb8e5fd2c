"""Climate workloads: gridded fields (NetCDF/Zarr) and station records, partitioned across
workers by region, time or sample, with shared normalisation statistics; a synthetic field
generator; and the two forecasters. No gRPC here."""
