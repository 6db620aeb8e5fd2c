"""Domain -> proto for the shard's own service, in one place (the servicer adapts, this converts).

Still elsewhere (shard/main.py): AssignShard -> ShardState (`build_state`) and the session
messages the shard sends; they belong here too.
"""

from __future__ import annotations

from tidal.shard.runtime import ShardRuntime
from tidal.v1 import common_pb2 as common_pb
from tidal.v1 import shard_pb2 as shard_pb


def shard_info_to_proto(runtime: ShardRuntime | None) -> shard_pb.GetShardInfoResponse:
    """What the shard holds: its latest job's shard (empty before the first job)."""
    if runtime is None:
        return shard_pb.GetShardInfoResponse()
    state = runtime.state
    start, end = state.shard_map.ranges[state.shard_index]
    return shard_pb.GetShardInfoResponse(
        job_id=runtime.job_id,
        shard_index=state.shard_index,
        version=state.version,
        range=common_pb.ShardRange(shard=state.shard_index, start=start, end=end),
        updates_applied=state.counters.updates_applied,
        updates_rejected=state.counters.updates_rejected,
        membership_epoch=state.membership_epoch,
    )
