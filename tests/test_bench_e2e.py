"""`bridge bench e2e`: the shape of its result, and that it leaves nothing behind.

Never a timing: rates depend on the machine and its load, so nothing here bounds a rate, a
latency or a ratio. One quick run (`--quick`: tiny windows, about a second per measurement)
through the command line checks that every row, limit and process is there, every number is
usable, no local system got a message twice, and that the stack is stopped and its directory
removed; one quick `--memory-only` run checks the fast backlog fill and its drain.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from bridge.bench import e2e
from bridge.bench._local import body_of_size
from bridge.cli import main

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc and finds leftovers through it"
)

PROCESSES = {
    "nats-server",
    "broker",
    "adapter jobcenter-unna",
    "adapter suchtberatung-unna",
    "adapter spdi-unna",
    "bench (local systems)",
}


def _usable(value: float) -> bool:
    return math.isfinite(value) and value > 0


def _processes_under(directory: Path) -> list[int]:
    wanted = str(directory).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if wanted in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quick_run_has_every_row_and_cleans_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "result.json"
    code = main(["bench", "e2e", "--quick", "--dir", str(tmp_path), "--output", str(output)])
    assert code == 0
    text = capsys.readouterr().out
    assert "bridge bench e2e --quick" in text
    assert "peak resident memory" in text

    result = json.loads(output.read_bytes())
    assert result["format"] == e2e.FORMAT
    assert result["quick"] is True
    assert len(result["load_average"]) == 3
    rows = {(r["body_bytes"], r["recipients"]): r for r in result["rows"]}
    assert set(rows) == {(1024, 1), (1024, 2), (65536, 1), (65536, 2)}
    for row in rows.values():
        for value in (
            row["msgs_per_second"],
            row["ratio"],
            row["cpu_ms_per_message"],
            row["cpu_ceiling_msgs_per_second"],
            row["transport"]["msgs_per_second"],
            row["transport"]["measured_msgs_per_second"],
            row["crypto"]["msgs_per_second"],
            row["latency"]["rate"],
        ):
            assert _usable(value)
        assert row["envelope_bytes"] > row["body_bytes"]
        assert row["lower_limit"] in ("transport", "crypto")
        lower = min(row["transport"]["msgs_per_second"], row["crypto"]["msgs_per_second"])
        assert row["ratio"] == pytest.approx(row["msgs_per_second"] / lower)
        assert set(row["cpu_ms_by_process"]) == PROCESSES
        assert row["duplicates"] == 0
        for which in ("delivered", "receipted"):
            p = row["latency"][which]
            assert 0 < p["p50"] <= p["p95"] <= p["p99"] <= p["max"]
        # Each message is stored at least once in submit and once per recipient's inbox.
        submitted = sum(
            v for k, v in row["writes_by_stream"].items() if k.startswith("BRIDGE_SUBMIT_")
        )
        assert submitted >= 1
        inboxes = sum(
            v for k, v in row["writes_by_stream"].items() if k.startswith("BRIDGE_INBOX_")
        )
        assert inboxes >= row["recipients"]
        assert row["transport"]["writes_per_message"] == 1 + 3 * row["recipients"]
    # Two recipients need more crypto than one: a second open and a second receipt.
    assert (
        rows[1024, 2]["crypto"]["cpu_ms_per_message"]
        > rows[1024, 1]["crypto"]["cpu_ms_per_message"]
    )
    backlogs = [m["backlog"] for m in result["memory"]]
    assert backlogs == list(e2e.Settings.quick_check().backlogs)
    for memory in result["memory"]:
        assert set(memory["peak_rss_bytes"]) == PROCESSES
        assert all(v > 0 for v in memory["peak_rss_bytes"].values())
    assert set(result["memory_growth"]) == PROCESSES
    assert {p["name"] for p in result["primitives"]} >= {"sign", "verify-signature", "hpke-wrap"}
    # The one-file case, tiny: the file went through whole and both sides were timed.
    attachment = result["attachment"]
    assert attachment["size"] == e2e.Settings.quick_check().attachment_bytes
    for value in ("e2e_seconds", "put_seconds", "get_seconds", "raw_mib_per_s", "ratio"):
        assert _usable(attachment[value])
    assert attachment["ratio"] == pytest.approx(
        attachment["e2e_mib_per_s"] / attachment["raw_mib_per_s"]
    )
    assert set(attachment["peak_rss_bytes"]) == PROCESSES
    assert "one attachment of 1024 KiB" in text

    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]
    assert _processes_under(tmp_path) == []


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_memory_only_run_fills_the_inbox_as_routed_and_drains_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "result.json"
    argv = ["bench", "e2e", "--quick", "--memory-only", "--dir", str(tmp_path)]
    assert main([*argv, "--output", str(output)]) == 0
    text = capsys.readouterr().out
    assert "peak resident memory" in text
    assert "drained while measured" in text

    result = json.loads(output.read_bytes())
    assert result["rows"] == []
    assert result["primitives"] == []
    backlogs = [m["backlog"] for m in result["memory"]]
    assert backlogs == list(e2e.Settings.quick_check().backlogs)
    for memory in result["memory"]:
        assert set(memory["peak_rss_bytes"]) == PROCESSES
        assert all(v > 0 for v in memory["peak_rss_bytes"].values())
        # The webhook's local system took some of what was stored straight into the inbox:
        # sealed by the sender's keys and stored as routed, it opened and verified.
        assert 1 <= memory["drained"] <= memory["backlog"]
    assert set(result["memory_growth"]) == PROCESSES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]
    assert _processes_under(tmp_path) == []


@pytest.mark.parametrize("size", [1024, 4096, 65536])
def test_bodies_have_the_size_asked_for_and_are_valid(size: int) -> None:
    assert len(body_of_size(size)) == size  # encode_body() validated it on the way


@pytest.mark.parametrize(
    "argv",
    [
        ["--backlog", "1000"],
        ["--backlog", "5000,1000"],
        ["--backlog", "0,10"],
        ["--window", "1"],
        ["--seconds", "0"],
        ["--attachment", "101"],
        ["--attachment", "-1"],
    ],
)
def test_bad_options_are_refused_before_anything_starts(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "e2e", "--dir", str(tmp_path), *argv])
    assert exit_info.value.code == 2
    assert list(tmp_path.iterdir()) == []
    assert "usage:" in capsys.readouterr().err
