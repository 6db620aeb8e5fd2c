"""transport/scrape_targets.py: the file_sd files a service writes, keeps or removes, on real
loopback sockets (a listening one is a live service, a closed one a stopped service)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tidal.core.errors import FailedPreconditionError
from tidal.transport.metrics import PreferredPort
from tidal.transport.scrape_targets import publish_metrics, target_file, withdraw


@contextmanager
def listening() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_no_folder_writes_nothing(tmp_path: Path) -> None:
    assert publish_metrics(None, "worker", "127.0.0.1", 0, 1234) is None
    withdraw(None)
    assert list(tmp_path.iterdir()) == []


def test_file_is_prometheus_file_sd_with_a_dialable_address(tmp_path: Path) -> None:
    published = publish_metrics(tmp_path / "targets", "shard", "0.0.0.0", 9465, 9465)
    assert published is not None and published.fixed
    assert published.path == target_file(tmp_path / "targets", "shard", 9465)
    assert json.loads(published.path.read_text()) == [{"targets": ["127.0.0.1:9465"]}]
    assert [p.name for p in (tmp_path / "targets").iterdir()] == ["shard-9465.json"]  # no temporary file left
    ipv6 = publish_metrics(tmp_path, "worker", "::1", 0, 4321)
    assert ipv6 is not None and json.loads(ipv6.path.read_text()) == [{"targets": ["[::1]:4321"]}]


@pytest.mark.parametrize(
    ("requested", "bound", "fixed"),
    [(9465, 9465, True), (PreferredPort(9466), 9466, True), (PreferredPort(9466), 40001, False), (0, 40002, False)],
    ids=["given", "default port free", "default port taken", "any free port"],
)
def test_a_service_on_its_given_port_keeps_its_file_one_on_a_free_port_removes_it(
    tmp_path: Path, requested: int | PreferredPort, bound: int, fixed: bool
) -> None:
    published = publish_metrics(tmp_path, "worker", "127.0.0.1", requested, bound)
    assert published is not None and published.fixed is fixed
    withdraw(published)
    assert published.path.exists() is fixed


def test_a_service_on_a_free_port_deletes_files_of_stopped_services_of_its_role_only(tmp_path: Path) -> None:
    dead_worker, dead_shard = closed_port(), closed_port()
    with listening() as live_worker:
        for role, port in (("worker", dead_worker), ("worker", live_worker), ("shard", dead_shard)):
            publish_metrics(tmp_path, role, "127.0.0.1", port, port)  # given ports: nothing pruned yet
        (tmp_path / "worker-notes.json").write_text("not a target file")
        assert len(list(tmp_path.glob("*.json"))) == 4
        # A crashed worker's replacement, on a free port.
        with listening() as new_worker:
            publish_metrics(tmp_path, "worker", "127.0.0.1", 0, new_worker)
            names = sorted(p.name for p in tmp_path.iterdir())
    # The dead worker's file is gone; the live one, the shard's (another role) and a file that
    # is not a target stay.
    assert names == sorted(
        [f"worker-{live_worker}.json", f"worker-{new_worker}.json", f"shard-{dead_shard}.json", "worker-notes.json"]
    )


def test_a_folder_that_cannot_be_written_is_one_line_naming_the_flag_and_variable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(FailedPreconditionError) as raised:
        publish_metrics(blocker / "targets", "worker", "127.0.0.1", 0, 1234)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("--scrape-target-dir / TIDAL_SCRAPE_TARGET_DIR: cannot write"), message
