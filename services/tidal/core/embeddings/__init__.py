"""Sparse parameters (issue 20): embedding tables held row by row on the parameter shards.

No sockets here. `routing` says which shard holds an id (the worker imports it too), `init`
draws a row's initial values from (job seed, table, id) alone, `optim` holds the row-wise
optimizers, `table` one table's rows on one shard (capacity, eviction), `shard` all the tables
of one shard (request checks, push deduplication, sync steps, snapshots), `delta` the
incremental snapshots of rows and how a chain of them merges back. See docs/embeddings.md.
"""
