"""Money is integer micro-dollars (1 USD = 1,000,000). Never a float."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

MICROS_PER_USD = 1_000_000
#: the largest amount pixbatch records: the state file keeps money in BIGINT micro-dollars
#: (at most 9.2e18), and sums of many amounts must fit too
MAX_USD = 10**12
MAX_MICROS = MAX_USD * MICROS_PER_USD


def usd_to_micros(value: str | int | Decimal) -> int:
    """'0.005' -> 5000. Accepts str, int or Decimal; refuses floats, sub-micro amounts and
    amounts beyond ``MAX_USD`` either way (a ValueError saying which)."""
    if isinstance(value, float):
        raise TypeError("money must not be a float; pass a string or Decimal")
    try:
        d = Decimal(str(value)) if not isinstance(value, Decimal) else value
    except InvalidOperation:
        raise ValueError(f"not an amount of dollars: {value!r}") from None
    if not d.is_finite():
        raise ValueError(f"not an amount of dollars: {value!r}")
    if d.copy_abs() > MAX_USD:  # before any arithmetic (copy_abs: no context, no Overflow): "1e999999999" must not become a billion-digit int
        raise ValueError(f"{value} is more than the largest amount pixbatch records (${MAX_USD:,})")
    # exact, on the digits (Decimal arithmetic rounds to 28 digits and flushes 1e-99999999 to 0)
    sign, digits, exp = d.as_tuple()
    assert isinstance(exp, int)
    shift = exp + 6  # where the micro-dollar place is, relative to the last digit
    if shift < 0:
        keep = max(len(digits) + shift, 0)
        if any(digits[keep:]):
            raise ValueError(f"{value!r} has more than 6 decimal places")
        digits, shift = digits[:keep], 0
    micros = int("".join(map(str, digits)) or "0") * 10**shift
    return -micros if sign else micros


def micros_to_decimal(micros: int) -> Decimal:
    return Decimal(micros) / MICROS_PER_USD


def format_usd(micros: int) -> str:
    """5000 -> '$0.005', 1200000 -> '$1.20': trailing zeros trimmed, at least cents."""
    sign = "-" if micros < 0 else ""
    d = micros_to_decimal(abs(micros)).quantize(Decimal("0.000001"))
    s = f"{d:f}".rstrip("0")
    whole, _, frac = s.partition(".")
    frac = frac.ljust(2, "0")
    return f"{sign}${int(whole):,}.{frac}"
