"""The bench's network case on emulated hosts (bench/netns.py) works end to end, shapes its links
and leaves no namespace or veth behind. It needs root: locally a machine where namespaces cannot
be made skips it with the reason; under CI=true (CI runs as root) that is a failure. Its figures
are not checked, only that they exist, except the TCP check, which must not beat the link rate
(a link that was not shaped would run at many times the rate)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench import netns

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
# What bench/netns.py names its namespaces and interfaces: "tb" and a random tag.
OURS = re.compile(r"\btb[0-9a-f]{6}[-\w]*")

pytestmark = pytest.mark.integration


def _ours() -> set[str]:
    """Namespaces and links named like the emulated hosts', in this namespace."""
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    names += subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=False).stdout
    return set(OURS.findall(names))


def _require_namespaces() -> None:
    if reason := netns.unavailable():
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI runs as root and must run the network case: {reason}")
        pytest.skip(reason)


# About 1.5 minutes on an idle 2-core machine; the bound leaves room for a loaded one.
@pytest.mark.timeout(600)
def test_network_case_measures_over_shaped_links_and_leaves_nothing_behind(tmp_path: Path) -> None:
    _require_namespaces()
    before = _ours()
    out = tmp_path / "RESULTS.md"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--cases", "network", "--network", "1gbit", "--out", str(out)],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=580, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert _ours() - before == set(), "the run left namespaces or links behind"
    text = out.read_text()
    section = text.split("## Between hosts (emulated)", 1)[1].split("\n## ", 1)[0]
    assert "propagation delay" in section
    expected = ["1 Gbit/s link | TCP check", "1 Gbit/s link: sync step W=2", "(float32, gRPC)"]
    expected += ["(bf16 both ways, gRPC)", "1 Gbit/s link: async 2 trainers", "TensorPipe PS, float32, TCP only"]
    # The bulk channel beside the stream (transport/bulk.py): the same rows again.
    expected += ["(float32, bulk channel)", "(bf16 both ways, bulk channel)"]
    # The sync step again on a cluster with mutual TLS (a piecewise channel on two connections).
    expected += ["(float32, bulk channel, mutual TLS)"]
    # Time to target: real workers in the worker namespaces against DDP ranks in the same ones.
    expected += ["1 Gbit/s link: time to target, 2 workers, 0.1M params, 2 shards, sync", "DDP (gloo), 2 processes"]
    expected += ["1 Gbit/s link: time to target, 2 workers, 0.1M params, 2 shards, async"]
    for row in expected:
        assert row in section, row
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| case")]
    assert len(rows) == 12, section
    assert not [r for r in rows if "n/a" in r or "nan" in r or "FAILED" in r], section
    load_cell = re.compile(r"\| (\*\*busy\*\*: )?\d+\.\d\d, \d+\.\d\d; \d+\.\d% \|$")
    assert not [r for r in rows if not load_cell.search(r)], section
    tcp = float(rows[0].split("|")[3])
    # tbf lets a 1 MiB burst through on top of the rate: over the check's 0.5 s, < 2% more.
    assert 0 < tcp <= 1.05, rows[0]


def test_a_bad_rate_is_one_line_naming_the_flag() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--cases", "network", "--network", "10gbps"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "python -m bench: --network: '10gbps' is not a link rate (e.g. 1gbit, 10gbit, 25gbit, 500mbit)"
    ]


def test_rates_parse_as_tc_reads_them() -> None:
    rates = netns.parse_rates("10gbit, 1gbit,25gbit,500mbit")
    assert not isinstance(rates, str)
    assert [(r.text, r.bits_per_s, r.label) for r in rates] == [
        ("10gbit", 10e9, "10 Gbit/s"), ("1gbit", 1e9, "1 Gbit/s"), ("25gbit", 25e9, "25 Gbit/s"),
        ("500mbit", 500e6, "500 Mbit/s"),
    ]  # fmt: skip
    # The buckets of the manual measurement: 4 MiB at 10 Gbit/s, 1 MiB at 1 Gbit/s.
    assert [r.burst_bytes for r in rates] == [4_000_000, 1 << 20, 10_000_000, 1 << 20]
    assert netns.parse_rates("") == "'' is not a link rate (e.g. 1gbit, 10gbit, 25gbit, 500mbit)"
    assert netns.parse_rates("0gbit") == "'0gbit' is not a link rate (e.g. 1gbit, 10gbit, 25gbit, 500mbit)"


def _namespaces() -> set[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False).stdout
    return {line.split()[0] for line in listed.splitlines() if line.strip()}


def test_the_hosts_are_removed_when_a_case_fails() -> None:
    _require_namespaces()
    before = _ours()
    with pytest.raises(RuntimeError, match="the case failed"), netns.emulated_hosts(netns.Rate("1gbit", 1e9)) as hosts:
        assert set(hosts.namespaces) <= _namespaces()
        raise RuntimeError("the case failed")
    assert _ours() - before == set()


@pytest.mark.timeout(120)
def test_the_hosts_are_removed_on_sigterm_and_ctrl_c() -> None:
    _require_namespaces()
    script = (
        "import sys, time\n"
        "from bench import netns\n"
        "with netns.emulated_hosts(netns.Rate('1gbit', 1e9)) as hosts:\n"
        "    print(' '.join(hosts.namespaces), flush=True)\n"
        "    time.sleep(600)\n"
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        before = _ours()
        child = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None
            made = set(child.stdout.readline().split())
            assert made and made <= _namespaces(), made
            child.send_signal(sig)
            child.wait(60)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        assert child.returncode != 0, sig
        assert _ours() - before == set(), sig
