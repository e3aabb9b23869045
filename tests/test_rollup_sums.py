"""Roll-up sums (``projections.rollups._sum``) against the plain ``Decimal`` sum quantized to the most places
of its terms read off their text: the same string, or the same error, for any text ``Decimal`` reads."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from projections import rollups

pytestmark = pytest.mark.unit


def quantized_sum(values: list[str]) -> str:
    """The sum as the roll-ups always defined it: exact terms added in an exact context, then rendered with
    the largest number of places among the terms (the oracle)."""
    total = Decimal(0)
    for v in values:
        total = rollups._EXACT.add(total, Decimal(v))
    places = max(rollups._places(v) for v in values)
    return f"{total.quantize(Decimal(1).scaleb(-places), context=rollups._EXACT):f}"


def outcome(f: object, values: list[str]) -> str:
    try:
        return str(f(values))  # type: ignore[operator]
    except (ArithmeticError, ValueError) as exc:
        return f"error: {type(exc).__name__}"


TEXT = st.one_of(
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
    st.decimals(allow_nan=False, allow_infinity=False, places=8).map(str),
    st.from_regex(r"\A\s?[-+]?[0-9]{1,4}(_[0-9])?(\.[0-9]{0,9}(_[0-9])?)?([eE][-+]?[0-9]{1,2})?\s?\Z"),
    st.integers(-(10**70), 10**70).map(str),
)


@settings(max_examples=1000)
@given(st.lists(TEXT, max_size=7))
def test_sums_equal_the_quantized_decimal_sum(values: list[str]) -> None:
    assert outcome(rollups._sum, values) == outcome(quantized_sum, values)


@pytest.mark.parametrize(
    "values",
    [
        ["1.5", "2.25"], ["-0.00", "0.0"], ["-0", "-0.0"], ["5", "-5.000"], ["1e-3", "2"], ["1E+2", "3.0"],
        [" 1.50 ", "2"], ["1.0_5", "2"], ["0E-10", "1"], ["12345678901234567890.12345678", "0.00000001"],
        ["9" * 61], ["1E60"], ["1." + "0" * 60], ["1." + "0" * 59, "0.5"], ["Infinity", "1.5"], ["NaN"],
        ["-Infinity", "Infinity"], [],
    ],
)  # fmt: skip
def test_edge_sums_equal_the_quantized_decimal_sum(values: list[str]) -> None:
    assert outcome(rollups._sum, values) == outcome(quantized_sum, values)
