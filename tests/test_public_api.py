"""The public surface is exactly ``tvreg.__all__``, sorted, and every name in it exists."""

import tvreg


def test_all_is_sorted_and_importable():
    assert tvreg.__all__ == sorted(tvreg.__all__)
    for name in tvreg.__all__:
        assert getattr(tvreg, name) is not None


def test_every_public_error_is_a_tvreg_error():
    for name in tvreg.__all__:
        obj = getattr(tvreg, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, tvreg.TvregError), name
