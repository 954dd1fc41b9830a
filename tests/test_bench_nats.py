"""`bridge bench nats`: the shape of its result and output, and that it leaves nothing behind.

Never a timing: rates depend on the machine, its disk and its load, so nothing here bounds a
rate or a ratio. Runs are tiny (`seconds=0.05`, small windows) and check that every row is
there, every number is usable, and that the servers are stopped and their stores removed, also
when the run is cancelled halfway.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
from pathlib import Path

import msgspec
import pytest

from bridge.bench import nats
from bridge.cli import main

SIZES = (1024, 4096)
WINDOW = 4
ROUNDS = 2

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="finds leftover servers through /proc"
)


def _servers_under(directory: Path) -> list[int]:
    """Pids of processes whose command line mentions `directory` (the servers' config files)."""
    wanted = str(directory).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # exited meanwhile, or not ours to read
        if wanted in cmdline:
            found.append(int(entry.name))
    return found


def _left_behind(directory: Path) -> tuple[list[str], list[int]]:
    """What a finished run left in `directory`: files and directories, running servers."""
    return sorted(entry.name for entry in directory.iterdir()), _servers_under(directory)


def _usable(value: float) -> bool:
    return math.isfinite(value) and value > 0


@pytest.fixture(scope="module")
def store_parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench-nats")


@pytest.fixture(scope="module")
def result(store_parent: Path) -> nats.NatsBench:
    return asyncio.run(
        nats.run(seconds=0.05, rounds=ROUNDS, sizes=SIZES, window=WINDOW, directory=store_parent)
    )


def test_one_row_per_size_and_in_flight(result: nats.NatsBench) -> None:
    rows = [(r.payload_bytes, r.in_flight) for r in result.rows]
    assert rows == [(size, n) for size in SIZES for n in (1, WINDOW)]
    assert (result.sizes, result.window, result.rounds) == (list(SIZES), WINDOW, ROUNDS)
    assert nats.DEFAULT_SIZES == (1024, 64 * 1024)


def test_every_number_is_positive_and_finite(result: nats.NatsBench) -> None:
    for row in result.rows:
        for rate in (row.core, row.sync_always, row.sync_default):
            assert _usable(rate.msgs_per_second)
            assert _usable(rate.megabytes_per_second)
            assert len(rate.rounds) == ROUNDS
            assert all(_usable(x) for x in rate.rounds)
        assert _usable(row.always_vs_default)
        assert _usable(row.always_vs_core)
        assert _usable(row.default_vs_core)


def test_ratios_and_megabytes_follow_from_the_rates(result: nats.NatsBench) -> None:
    # Arithmetic, not timing: every derived number must come from the printed rates.
    for row in result.rows:
        always, default, core = row.sync_always, row.sync_default, row.core
        assert row.always_vs_default == pytest.approx(
            always.msgs_per_second / default.msgs_per_second
        )
        assert row.always_vs_core == pytest.approx(always.msgs_per_second / core.msgs_per_second)
        assert row.default_vs_core == pytest.approx(default.msgs_per_second / core.msgs_per_second)
        for rate in (always, default, core):
            expected = rate.msgs_per_second * row.payload_bytes / 1e6
            assert rate.megabytes_per_second == pytest.approx(expected)


def test_describes_where_it_ran(result: nats.NatsBench, store_parent: Path) -> None:
    assert result.format == nats.FORMAT
    assert result.store == str(store_parent)
    assert result.store_filesystem
    assert result.nats_server.count(".") == 2
    assert result.cpus >= 1


def test_servers_stopped_and_stores_removed(result: nats.NatsBench, store_parent: Path) -> None:
    assert result.rows
    assert _left_behind(store_parent) == ([], [])


def test_json_round_trips(result: nats.NatsBench) -> None:
    data = nats.to_json(result)
    parsed = json.loads(data)
    assert parsed["format"] == nats.FORMAT
    assert len(parsed["rows"]) == len(SIZES) * 2
    assert msgspec.json.decode(data, type=nats.NatsBench) == result


def test_text_shows_every_row(result: nats.NatsBench) -> None:
    lines = nats.render_text(result).splitlines()
    for size in ("1 KiB", "4 KiB"):
        for in_flight in ("1", str(WINDOW)):
            for label in ("core publish+flush", "sync always", "server default"):
                assert any(
                    line.split()[:3] == [*size.split(), in_flight] and label in line
                    for line in lines
                ), (size, in_flight, label)
    assert all(line == line.rstrip() for line in lines)


async def test_a_cancelled_run_stops_its_servers_and_removes_its_stores(tmp_path: Path) -> None:
    measuring = asyncio.Event()
    running_servers: list[int] = []

    def progress(message: str) -> None:
        if message.startswith("round 1/") and not measuring.is_set():
            running_servers.extend(_servers_under(tmp_path))
            measuring.set()

    task = asyncio.create_task(
        nats.run(
            seconds=30.0, rounds=1, sizes=(1024,), window=2, directory=tmp_path, progress=progress
        )
    )
    async with asyncio.timeout(60):
        await measuring.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(running_servers) == 2  # so the check below can see servers at all
    assert _left_behind(tmp_path) == ([], [])


def test_cli_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--seconds", "0.05", "--rounds", "1", "--sizes", "512", "--window", "2"]
    assert main(["bench", "nats", *args, "--dir", str(tmp_path), "--json"]) == 0
    out = capsys.readouterr()
    parsed = json.loads(out.out)
    assert [(r["payload_bytes"], r["in_flight"]) for r in parsed["rows"]] == [(512, 1), (512, 2)]
    assert all(_usable(r["always_vs_default"]) for r in parsed["rows"])
    assert "round 1/1" in out.err  # progress goes to stderr, never into the JSON
    assert _left_behind(tmp_path) == ([], [])


def test_cli_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--seconds", "0.05", "--rounds", "1", "--sizes", "1024", "--window", "3"]
    assert main(["bench", "nats", *args, "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("bridge bench nats: payloads 1 KiB; window 3;")
    assert "always/default" in out


@pytest.mark.parametrize(
    "args",
    [
        ["--sizes", ""],
        ["--sizes", "0"],
        ["--sizes", "1024,1024"],
        ["--sizes", str(1024 * 1024 + 1)],
        ["--sizes", ",".join(str(n) for n in range(1, 10))],
        ["--window", "1"],
        ["--window", "1025"],
        ["--window", "many"],
        ["--seconds", "0"],
        ["--seconds", "nan"],
        ["--rounds", "0"],
    ],
)
def test_cli_refuses_bad_arguments(args: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", "nats", *args])
    assert exc.value.code == 2


@pytest.mark.parametrize(
    ("seconds", "rounds", "sizes", "window"),
    [
        (0.0, 1, SIZES, 2),
        (math.inf, 1, SIZES, 2),
        (0.05, 0, SIZES, 2),
        (0.05, 1, (), 2),
        (0.05, 1, (1024, 1024), 2),
        (0.05, 1, (0,), 2),
        (0.05, 1, (1024 * 1024 + 1,), 2),
        (0.05, 1, tuple(range(1, 10)), 2),
        (0.05, 1, SIZES, 1),
        (0.05, 1, SIZES, nats.MAX_WINDOW + 1),
    ],
)
async def test_run_refuses_bad_arguments_before_starting_anything(
    tmp_path: Path, seconds: float, rounds: int, sizes: tuple[int, ...], window: int
) -> None:
    with pytest.raises(ValueError, match="must"):
        await nats.run(
            seconds=seconds, rounds=rounds, sizes=sizes, window=window, directory=tmp_path
        )
    assert _left_behind(tmp_path) == ([], [])


def test_cli_names_a_store_directory_it_cannot_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing"
    assert main(["bench", "nats", "--seconds", "0.05", "--dir", str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err
    assert "[bench.dir]" in err
