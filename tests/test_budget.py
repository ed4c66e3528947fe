import pytest

from metanet.budget import format_flops, parse_budgets, parse_flops


@pytest.mark.parametrize("text, value", [
    ("600M", 600_000_000), ("1.5G", 1_500_000_000), ("1.5e9", 1_500_000_000), ("600000000", 600_000_000),
    ("300m", 300_000_000), (" 2g ", 2_000_000_000), ("750K", 750_000), (".5G", 500_000_000),
])
def test_good_budgets(text, value):
    assert parse_flops(text) == value


@pytest.mark.parametrize("text", ["abc", "-1", "0", "1.5X", "", "G", "1.5GG", "nan", "inf", "0M"])
def test_bad_budgets_have_a_clear_message(text):
    with pytest.raises(ValueError, match="invalid FLOP budget"):
        parse_flops(text)


def test_budget_family():
    assert parse_budgets("600M,300M,1.2G") == [300_000_000, 600_000_000, 1_200_000_000]
    with pytest.raises(ValueError):
        parse_budgets("300M,,600M")


def test_format_round_trips():
    for n in (142_474_112, 3_218_118_400, 600_000_000):
        assert parse_flops(format_flops(n)) == pytest.approx(n, rel=1e-3)
