"""`bridge bench crypto`: the shape of its result and output, never its timings.

Timings depend on the machine and its load, so nothing here bounds a rate or a ratio; the runs
are tiny (`seconds=0.05`) and only check that every row is there and every number is usable.
"""

from __future__ import annotations

import json
import math

import msgspec
import pytest

from bridge.bench import crypto
from bridge.cli import main

RECIPES = ("seal", "verify", "open")
PRIMITIVES = {
    "sign",
    "verify-signature",
    "hpke-wrap",
    "hpke-unwrap",
    "aead-seal",
    "aead-open",
    "sha256",
    "hkdf-pair",
    "random",
}
TINY = ["--seconds", "0.05"]


@pytest.fixture(scope="module")
def result() -> crypto.CryptoBench:
    return crypto.run(seconds=0.05, recipients=2, rounds=2)


def _usable(value: float) -> bool:
    return math.isfinite(value) and value > 0


def test_every_recipe_and_size_has_one_row(result: crypto.CryptoBench) -> None:
    rows = [(r.recipe, r.body_bytes) for r in result.recipes]
    assert sorted(rows) == sorted((r, s) for r in RECIPES for s in crypto.BODY_SIZES)
    assert crypto.BODY_SIZES == (1024, 64 * 1024)


def test_every_number_is_positive_and_finite(result: crypto.CryptoBench) -> None:
    for r in result.recipes:
        assert _usable(r.ops_per_second)
        assert _usable(r.primitive_ops_per_second)
        assert _usable(r.ratio)
        assert len(r.rounds) == 2
        assert all(_usable(x) for x in r.rounds)
    for p in result.primitives:
        assert _usable(p.ops_per_second)
        assert len(p.rounds) == 2
        assert all(_usable(x) for x in p.rounds)


def test_ratio_is_recipe_rate_over_primitive_rate(result: crypto.CryptoBench) -> None:
    # Arithmetic, not timing: the ratio must be computed from the two printed rates.
    for r in result.recipes:
        assert r.ratio == pytest.approx(r.ops_per_second / r.primitive_ops_per_second)


def test_every_primitive_is_measured_and_every_cost_term_refers_to_one(
    result: crypto.CryptoBench,
) -> None:
    measured = {(p.name, p.input_bytes) for p in result.primitives}
    assert {name for name, _ in measured} == PRIMITIVES
    assert len(measured) == len(result.primitives)
    for r in result.recipes:
        assert r.cost
        for term in r.cost:
            assert (term.name, term.input_bytes) in measured
            assert term.count >= 1


def test_costs_follow_the_recipes(result: crypto.CryptoBench) -> None:
    for r in result.recipes:
        counts: dict[str, int] = {}
        for term in r.cost:
            counts[term.name] = counts.get(term.name, 0) + term.count
        if r.recipe == "seal":
            # seal() checks its own output with verify(), so it pays for a verify too.
            assert counts["sign"] == 1
            assert counts["verify-signature"] == 1
            assert counts["hpke-wrap"] == result.recipients
            assert counts["aead-seal"] == 1
            assert counts["sha256"] == 2
        elif r.recipe == "verify":
            assert counts == {"verify-signature": 1, "sha256": 1}
        else:
            assert counts["verify-signature"] == 1
            assert counts["hpke-unwrap"] == 1
            assert counts["aead-open"] == 1
            assert "sign" not in counts
            assert "hpke-wrap" not in counts
        aead = [t for t in r.cost if t.name.startswith("aead-")]
        assert all(t.input_bytes in (r.body_bytes, r.body_bytes + 16) for t in aead)


def test_json_round_trips(result: crypto.CryptoBench) -> None:
    data = crypto.to_json(result)
    parsed = json.loads(data)
    assert parsed["format"] == crypto.FORMAT
    assert parsed["recipients"] == 2
    assert msgspec.json.decode(data, type=crypto.CryptoBench) == result


def test_text_shows_every_row(result: crypto.CryptoBench) -> None:
    text = crypto.render_text(result)
    lines = text.splitlines()
    for recipe in RECIPES:
        for size in ("1 KiB", "64 KiB"):
            assert any(line.split()[:3] == [recipe, *size.split()] for line in lines), (
                recipe,
                size,
            )
    for name in PRIMITIVES:
        assert any(line.startswith(name + " ") for line in lines), name
    assert "ratio" in text


def test_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "crypto", *TINY, "--recipients", "1", "--json"]) == 0
    out = capsys.readouterr()
    parsed = json.loads(out.out)
    assert parsed["recipients"] == 1
    assert len(parsed["recipes"]) == 6
    assert all(_usable(r["ratio"]) for r in parsed["recipes"])
    assert "round 1/3" in out.err  # progress goes to stderr, never into the JSON


def test_cli_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "crypto", *TINY, "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("bridge bench crypto: 3 recipient(s)")
    assert "median of 1 rounds" in out


@pytest.mark.parametrize(
    "args",
    [
        ["--recipients", "0"],
        ["--recipients", "17"],
        ["--recipients", "two"],
        ["--seconds", "0"],
        ["--seconds", "-1"],
        ["--seconds", "inf"],
        ["--rounds", "0"],
    ],
)
def test_cli_refuses_bad_arguments(args: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench", "crypto", *args])
    assert exc.value.code == 2


def test_bench_needs_a_subcommand() -> None:
    with pytest.raises(SystemExit) as exc:
        main(["bench"])
    assert exc.value.code == 2


@pytest.mark.parametrize(
    ("seconds", "recipients", "rounds"),
    [(0.0, 1, 1), (math.nan, 1, 1), (0.05, 0, 1), (0.05, 17, 1), (0.05, 1, 0)],
)
def test_run_refuses_bad_arguments(seconds: float, recipients: int, rounds: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        crypto.run(seconds=seconds, recipients=recipients, rounds=rounds)
