"""`tidal climate`: generate a synthetic field, compute shared statistics, and run the worked
example on a local cluster (the data layer and models live in `tidal.core.climate`)."""
