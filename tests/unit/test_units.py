from __future__ import annotations

import pytest

from scheduler.units import UnitError, format_duration, parse_duration, parse_size


@pytest.mark.parametrize(
    "text,seconds",
    [
        ("90", 90),
        ("90s", 90),
        ("30m", 1800),
        ("4h", 14400),
        ("1d12h", 129600),
        ("1:30:00", 5400),
        ("30:00", 1800),
        ("2-00:00:00", 172800),
        (45, 45),
        ("1w", 604800),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "soon", "4x", "-5", "0", 0, True, "1h30", "99999d"])
def test_parse_duration_rejects(bad: object) -> None:
    with pytest.raises(UnitError):
        parse_duration(bad)  # type: ignore[arg-type]


def test_parse_size() -> None:
    assert parse_size("16G") == 16 * 1024**3
    assert parse_size("512M") == 512 * 1024**2
    assert parse_size("1GiB") == 1024**3
    assert parse_size(1000) == 1000
    with pytest.raises(UnitError):
        parse_size("lots")


def test_format_duration() -> None:
    assert format_duration(5) == "5s"
    assert format_duration(125) == "2m05s"
    assert format_duration(3 * 3600 + 60) == "3h01m"
    assert format_duration(None) == "-"
