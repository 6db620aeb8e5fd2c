"""The bench's quiet-machine check: /proc parsing, the busy policy, the wait for a busy machine to
settle, RESULTS.md's load column, and the CLI's refusal. /proc input is recorded text in the
kernel's format (from the 2-CPU machine the bench runs on, and a steal-heavy VM), written to a
folder the guard reads like /proc."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from bench.machine_load import CaseLoad, CpuTimes, Guard, Policy, parse_loadavg, read_sample, refusal, steal_share
from bench.results import Row
from bench.stats import Spread

from bench import report

ROOT = Path(__file__).resolve().parents[2]

# Two readings of /proc/stat two seconds apart on the bench's machine (intr line cut short).
STAT_QUIET_1 = """cpu  3178245 0 475771 7657626 16037 0 17639 12940 0 0
cpu0 1359524 0 213205 4086993 2248 0 9068 6738 0 0
cpu1 1818720 0 262566 3570633 13789 0 8570 6202 0 0
intr 31341589 0 0 0 0 0 0 0 0 0
ctxt 91200331
btime 1764790000
processes 23210
procs_running 2
procs_blocked 0
"""
STAT_QUIET_2 = """cpu  3178607 0 475796 7657630 16039 0 17640 12942 0 0
cpu0 1359707 0 213215 4086995 2249 0 9068 6739 0 0
cpu1 1818899 0 262581 3570634 13790 0 8571 6203 0 0
intr 31344356 0 0 0 0 0 0 0 0 0
ctxt 91203112
btime 1764790000
processes 23238
procs_running 1
procs_blocked 0
"""
# A VM whose hypervisor is oversubscribed: 60 of the 400 jiffies between the readings stolen.
STAT_STEAL_1 = """cpu  10132153 290696 3084719 46828483 16683 0 25195 175628 0 0
cpu0 5066076 145348 1542359 23414241 8341 0 12597 87814 0 0
"""
STAT_STEAL_2 = """cpu  10132353 290696 3084759 46828583 16683 0 25195 175688 0 0
cpu0 5066176 145348 1542379 23414291 8341 0 12597 87844 0 0
"""
# Linux before 2.6.11: no steal field.
STAT_OLD_KERNEL = "cpu  2255 34 2290 22625563 6290 127 456\ncpu0 1132 34 1441 11311718 3675 127 438\n"
LOADAVG_QUIET = "0.31 0.52 0.60 1/118 23240\n"
LOADAVG_BUSY = "3.47 2.96 1.13 5/121 23238\n"


def _proc(folder: Path, loadavg: str, stat: str) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "loadavg").write_text(loadavg)
    (folder / "stat").write_text(stat)
    return folder


def test_cpu_times_sum_the_jiffies_up_to_steal_and_read_the_steal() -> None:
    times = CpuTimes.parse(STAT_QUIET_1)
    assert times == CpuTimes(total=3178245 + 475771 + 7657626 + 16037 + 17639 + 12940, steal=12940)
    # guest and guest_nice are already in user and nice: a reading with them counts them once.
    assert CpuTimes.parse("cpu  100 0 50 800 0 0 0 10 40 0\n") == CpuTimes(total=960, steal=10)


def test_an_old_kernel_without_steal_reads_as_no_steal() -> None:
    assert CpuTimes.parse(STAT_OLD_KERNEL) == CpuTimes(total=2255 + 34 + 2290 + 22625563 + 6290 + 127 + 456, steal=0)


def test_proc_stat_without_the_aggregate_line_is_an_error() -> None:
    with pytest.raises(ValueError, match="'cpu' line"):
        CpuTimes.parse("cpu0 1 2 3 4 5 6 7 8 0 0\nintr 5\n")


def test_steal_share_is_the_stolen_part_of_the_time_between_two_readings() -> None:
    quiet = steal_share(CpuTimes.parse(STAT_QUIET_1), CpuTimes.parse(STAT_QUIET_2))
    assert quiet == pytest.approx(2 / 396)
    stolen = steal_share(CpuTimes.parse(STAT_STEAL_1), CpuTimes.parse(STAT_STEAL_2))
    assert stolen == pytest.approx(60 / 400)
    same = CpuTimes.parse(STAT_QUIET_1)
    assert steal_share(same, same) == 0.0  # no time passed: nothing stolen, no division by zero


def test_loadavg_reads_the_three_averages() -> None:
    assert parse_loadavg(LOADAVG_BUSY) == (3.47, 2.96, 1.13)
    with pytest.raises(ValueError, match="expected 3 load averages"):
        parse_loadavg("0.31\n")


def test_policy_counts_a_load_at_the_limit_or_a_steal_over_it_as_busy() -> None:
    policy = Policy(max_load=1.0, max_steal=0.05, allow_busy=False, settle_s=0)
    assert policy.reasons(0.99, 0.05) == []
    assert policy.reasons(1.0, 0.0) == ["1-min load average 1.00 >= --max-load 1"]
    assert policy.reasons(0.2, 0.15) == ["CPU steal 15.0% > --max-steal 5%"]
    assert len(policy.reasons(3.47, 0.15)) == 2


def test_a_busy_machine_is_reported_with_its_load_and_the_flags(tmp_path: Path) -> None:
    proc = _proc(tmp_path / "proc", LOADAVG_BUSY, STAT_QUIET_2)
    guard = Guard(Policy(1.0, 0.05, allow_busy=False, settle_s=0), proc=proc, sleep=lambda s: None)
    check = guard.check()
    assert check.reasons == ["1-min load average 3.47 >= --max-load 1"]
    line = refusal("the run", check)
    assert "\n" not in line
    assert "3.47" in line and "--max-load" in line and "--allow-busy" in line


def test_the_guard_waits_for_a_busy_machine_to_settle(tmp_path: Path) -> None:
    """The load falls while the guard waits between checks: it returns quiet, having said once
    that it waits."""
    proc = _proc(tmp_path / "proc", LOADAVG_BUSY, STAT_QUIET_1)
    slept: list[float] = []

    def sleep(seconds: float) -> None:  # time passes: the next reading is the later one
        slept.append(seconds)
        (proc / "stat").write_text(STAT_QUIET_2)
        if seconds == 5.0:
            (proc / "loadavg").write_text(LOADAVG_QUIET)

    logged: list[str] = []
    guard = Guard(Policy(1.0, 0.05, allow_busy=False, settle_s=60), proc=proc, sleep=sleep)
    check = guard.check(logged.append)
    assert check.reasons == []
    assert check.sample.load == (0.31, 0.52, 0.60)
    assert slept == [1.0, 5.0, 1.0]
    assert len(logged) == 1 and "waiting up to 60 s" in logged[0] and "3.47" in logged[0]


def test_the_guard_gives_up_after_the_settle_time(tmp_path: Path) -> None:
    proc = _proc(tmp_path / "proc", LOADAVG_BUSY, STAT_QUIET_1)
    slept: list[float] = []
    guard = Guard(Policy(1.0, 0.05, allow_busy=False, settle_s=12), proc=proc, sleep=slept.append)
    check = guard.check()
    assert check.reasons  # still busy
    assert sum(slept) <= 12 + 1.0  # checks at 0, 6 and 12 s; none after the settle time
    assert slept == [1.0, 5.0, 1.0, 5.0, 1.0]


def test_a_case_whose_steal_went_over_the_limit_is_marked_busy(tmp_path: Path) -> None:
    proc = _proc(tmp_path / "proc", LOADAVG_QUIET, STAT_STEAL_1)
    guard = Guard(Policy(1.0, 0.05, allow_busy=False, settle_s=0), proc=proc, sleep=lambda s: None)
    before = guard.check()
    assert before.reasons == []
    (proc / "stat").write_text(STAT_STEAL_2)  # the case ran; the hypervisor took 15% of it
    (proc / "loadavg").write_text(LOADAVG_BUSY)  # the case's own processes: not a reason
    load = guard.case_load(before)
    assert load.reasons == ["during the case: CPU steal 15.0% > --max-steal 5%"]
    assert (load.load_before, load.load_after, load.steal) == (0.31, 3.47, pytest.approx(0.15))


def test_results_print_the_load_beside_each_figure() -> None:
    quiet = CaseLoad(0.31, 1.9, 0.004, [])
    busy = CaseLoad(3.47, 3.9, 0.0, ["1-min load average 3.47 >= --max-load 1"])
    rows = [
        Row("async", "updates/s (float32, shared memory)", Spread.of([39.9, 41.0, 38.2]), machine=quiet),
        Row("sync step", "ms", Spread.of([50.0]), machine=busy),
    ]
    lines = report.table(rows)
    assert lines[0].endswith(f"| {report.LOAD_COLUMN} |")
    assert lines[2].endswith("| 0.31, 1.90; 0.4% |")
    assert lines[3].endswith("| **busy**: 3.47, 3.90; 0.0% |")


def test_read_sample_reads_this_machines_proc() -> None:
    sample = read_sample()
    assert all(x >= 0 for x in sample.load)
    assert sample.cpu.total > 0


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "bench", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize(
    ("flag", "value"), [("--max-load", "-1"), ("--max-load", "nan"), ("--max-steal", "101"), ("--settle-s", "-5")]
)
def test_bad_flags_get_one_line_naming_the_flag(flag: str, value: str, tmp_path: Path) -> None:
    done = _bench(flag, value, "--out", str(tmp_path / "RESULTS.md"))
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and flag in done.stderr, done.stderr
    assert not (tmp_path / "RESULTS.md").exists()


def test_a_busy_machine_refuses_the_run_and_writes_nothing(tmp_path: Path) -> None:
    """--max-load 0 makes any load busy: the run refuses before its first case."""
    out = tmp_path / "RESULTS.md"
    done = _bench("--cases", "serde", "--max-load", "0", "--settle-s", "0", "--out", str(out))
    assert done.returncode == 3, done.stderr
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert "busy before the run" in done.stderr and "--max-load 0" in done.stderr and "--allow-busy" in done.stderr
    assert not out.exists()


def test_allow_busy_measures_and_marks_the_figures(tmp_path: Path) -> None:
    out = tmp_path / "RESULTS.md"
    args = ("--quick", "--cases", "serde", "--max-load", "0", "--allow-busy", "--out", str(out))
    done = _bench(*args)
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| serde")]
    assert len(rows) == 4 and all("| **busy**: " in r for r in rows), text
    assert "This run: busy, figures marked: serde, default malloc (1-min load average" in text
