import pytest

from manatee.core.lsn import ZERO, Lsn, format_lsn, parse_lsn


@pytest.mark.parametrize(
    "text,value",
    [
        ("0/0", 0),
        ("0/16B3748", 0x16B3748),
        ("16/B374D848", (0x16 << 32) | 0xB374D848),
        ("FFFFFFFF/FFFFFFFF", (1 << 64) - 1),
        ("0/9", 9),
    ],
)
def test_parse_and_format_roundtrip(text, value):
    assert parse_lsn(text) == value
    assert format_lsn(value) == text
    assert str(Lsn.parse(text)) == text
    assert int(Lsn.parse(text)) == value


def test_lowercase_and_padding_accepted_but_printed_like_postgres():
    assert Lsn.parse("0/00abcdef") == Lsn(0xABCDEF)
    assert str(Lsn.parse("0/00abcdef")) == "0/ABCDEF"


@pytest.mark.parametrize("bad", ["", "0", "0/", "/1", "1/2/3", "G/0", "123456789/0", "0/-1", None, 5])
def test_parse_rejects_garbage(bad):
    with pytest.raises(ValueError, match="LSN"):
        parse_lsn(bad)


def test_ordering_is_numeric_not_textual():
    # As strings "0/9" > "0/10"; as positions it is the other way round.
    assert "0/9" > "0/10"
    assert Lsn.parse("0/9") < Lsn.parse("0/10")
    assert Lsn.parse("1/0") > Lsn.parse("0/FFFFFFFF")
    assert max(Lsn.parse(x) for x in ["0/9", "0/10", "0/A"]) == Lsn.parse("0/10")
    assert sorted([Lsn(3), Lsn(1), Lsn(2)]) == [Lsn(1), Lsn(2), Lsn(3)]
    assert Lsn(5) >= Lsn(5) and Lsn(5) <= Lsn(5) and not Lsn(5) < Lsn(5)


def test_arithmetic_and_coerce():
    a, b = Lsn.parse("0/100"), Lsn.parse("0/180")
    assert b - a == 0x80
    assert a - b == -0x80
    assert a + 0x80 == b
    assert Lsn.coerce("0/100") == a and Lsn.coerce(256) == a and Lsn.coerce(a) is a
    assert ZERO == Lsn(0)
    assert repr(a) == "Lsn('0/100')"
    assert {a, Lsn(256)} == {a}


def test_range_and_type_checked():
    with pytest.raises(ValueError):
        Lsn(-1)
    with pytest.raises(ValueError):
        Lsn(1 << 64)
    with pytest.raises(TypeError):
        Lsn("0/1")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Lsn(1) < "0/2"  # noqa: B015
