"""Where a worker's training and validation data come from: built-in data sets, file sources
(`tabular`, `arrays`) and user factories ("package.module:factory"), all behind one contract
(`api.py`) and read batch by batch (`batches.py`, `prefetch.py`)."""
