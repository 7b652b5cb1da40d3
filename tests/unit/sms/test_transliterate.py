"""Russian → Latin transliteration for GSM-7."""

from __future__ import annotations

import pytest

from pipeline.sms.encoding import is_gsm7
from pipeline.sms.transliterate import transliterate


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Ваш заказ доставлен", "Vash zakaz dostavlen"),
        ("жук щука ёж", "zhuk schuka yozh"),
        ("Жук Щука Ёж", "Zhuk Schuka Yozh"),
        ("ЖУК ЩУКА ЁЖ", "ZHUK SCHUKA YOZH"),
        ("Ё", "Yo"),
        ("объём, подъезд, соль", "obyom, podezd, sol"),
        ("Цена: 1 990 ₽", "Tsena: 1 990 RUB"),
        ("«Заказ» № 5 — готов – ок", '"Zakaz" N 5 - gotov - ok'),
        ("10\u00a0000\u202fруб…", "10 000 rub..."),
        ("Hello, world! 123", "Hello, world! 123"),
        ("Юля, Яна, Эля, Хан, Чай, Шар, Йод, Ы", "Yulya, Yana, Elya, Han, Chay, Shar, Yod, Y"),
    ],
)
def test_transliterate(text: str, expected: str) -> None:
    assert transliterate(text) == expected


def test_every_russian_letter_becomes_gsm7() -> None:
    alphabet = "абвгдеёжзийклмнопрстуфхцчшщъыьэюя"
    text = alphabet + alphabet.upper() + " «»„“”‘’—–№₽…\u00a0\u202f\t"
    assert not is_gsm7(text)
    assert is_gsm7(transliterate(text))


def test_other_scripts_are_left_alone() -> None:
    assert transliterate("ok 😀 中") == "ok 😀 中"
