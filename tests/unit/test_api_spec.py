"""The Python API's job specs, its status objects and a cheap `import tidal`; no cluster needed."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

import tidal
from tidal.api.spec import spec_payload
from tidal.api.status import JobResult, JobStatus
from tidal.core import spec as core_spec
from tidal.core.errors import InvalidArgumentError
from tidal.v1 import common_pb2 as common_pb
from tidal.v1 import coordinator_pb2 as coord_pb


def test_keywords_and_plain_dicts_build_a_spec() -> None:
    spec = tidal.JobSpec(
        model={"name": "mlp", "args": {"hidden": [64]}},
        dataset={"name": "synthetic"},
        mode="async",
        steps=200,
        num_workers=2,
    )
    assert isinstance(spec, core_spec.JobSpec)
    assert spec.model.args == {"hidden": [64]} and spec.mode == core_spec.Mode.ASYNC
    assert spec.target_version == 400


def test_nested_models_build_a_spec() -> None:
    spec = tidal.JobSpec(optimizer=core_spec.OptimizerSpec(name="adam", lr=0.01), dataset=core_spec.DatasetSpec())
    assert spec.optimizer.name == "adam"


def test_a_bad_field_is_one_invalid_argument_error_naming_it() -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        tidal.JobSpec(optimizer={"lr": -1}, steps=0)
    assert not isinstance(caught.value, ValidationError)
    message = str(caught.value)
    assert "spec.optimizer.lr: Input should be greater than 0" in message
    assert "spec.steps:" in message


def test_an_unknown_field_is_named() -> None:
    with pytest.raises(InvalidArgumentError, match=r"spec\.model\.hiden: Extra inputs are not permitted"):
        tidal.JobSpec(model={"name": "mlp", "hiden": [3]})


def test_a_option_of_another_mode_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match=r"spec\.consistency: .*staleness_bound applies to mode ssp"):
        tidal.JobSpec(mode="async", consistency={"staleness_bound": 5})


def test_replace_validates_again() -> None:
    spec = tidal.JobSpec(mode="sync", steps=10)
    assert spec.replace(mode="async").mode == core_spec.Mode.ASYNC
    with pytest.raises(InvalidArgumentError, match=r"spec\.num_workers"):
        spec.replace(num_workers=0)


def test_from_file_reads_an_example(tmp_path: Path) -> None:
    examples = Path(__file__).resolve().parents[2] / "examples"
    assert tidal.JobSpec.from_file(examples / "seattle-async.yaml").mode == core_spec.Mode.ASYNC
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: -3\n")
    with pytest.raises(InvalidArgumentError, match=r"spec\.steps"):
        tidal.JobSpec.from_file(bad)


def test_the_payload_holds_what_was_given() -> None:
    spec = tidal.JobSpec(model={"name": "mlp", "args": {"hidden": [8]}}, mode="async", steps=5)
    assert spec_payload(spec) == {"model": {"name": "mlp", "args": {"hidden": [8]}}, "mode": "async", "steps": 5}
    assert core_spec.parse_job_spec(spec_payload(spec)).model_dump() == spec.model_dump()


def test_a_mapping_is_validated_before_it_is_sent() -> None:
    assert spec_payload({"steps": 3}) == {"steps": 3}
    with pytest.raises(InvalidArgumentError, match=r"spec\.batch_size"):
        spec_payload({"batch_size": 0})
    with pytest.raises(InvalidArgumentError, match="spec: expected a JobSpec or a mapping, got list"):
        spec_payload([1, 2])  # type: ignore[arg-type]


def _proto_status() -> coord_pb.JobStatus:
    status = coord_pb.JobStatus(
        job_id="job-7", name="n", state=common_pb.JOB_STATE_SUCCEEDED, mode="sync", spec_json='{"steps": 4}'
    )
    status.version, status.target_version, status.started_at, status.finished_at = 4, 4, 10.0, 12.5
    status.val_loss = 0.25
    status.evals.add(elapsed_s=1.0, version=2, val_loss=0.5, val_accuracy=0.75)
    return status


def test_statuses_are_plain_frozen_objects_with_string_states() -> None:
    status = JobStatus.from_proto(_proto_status())
    assert status.state == "succeeded" and status.done and status.progress == 1.0
    assert status.val_loss == 0.25 and status.val_accuracy is None  # absent, not 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        status.state = "failed"  # type: ignore[misc]
    result = JobResult.from_proto(_proto_status())
    assert result.succeeded and result.duration_s == 2.5 and result.spec["steps"] == 4
    assert result.evals[0].val_accuracy == 0.75
    assert "spec" not in repr(result)


def test_importing_tidal_loads_nothing_else() -> None:
    code = (
        "import sys, tidal\n"
        "print(sorted(m for m in ('grpc', 'torch', 'pydantic', 'tidal.api') if m in sys.modules))\n"
        "print(tidal.JobSpec.__module__, 'tidal.api' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120)
    assert done.stdout.splitlines() == ["[]", "tidal.api.spec True"]


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = tidal.nope  # type: ignore[attr-defined]
    assert "local_cluster" in dir(tidal)


def test_statuses_name_their_metric() -> None:
    proto = _proto_status()
    assert JobStatus.from_proto(proto).val_metric == ""  # no evaluation yet
    proto.val_accuracy, proto.val_metric = 0.31, "focal_loss"
    status, result = JobStatus.from_proto(proto), JobResult.from_proto(proto)
    assert (status.val_metric, status.val_accuracy) == (result.val_metric, result.val_accuracy) == ("focal_loss", 0.31)
