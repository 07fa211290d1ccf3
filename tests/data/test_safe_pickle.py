import codecs
import os
import pickle

import numpy as np
import pytest
from numpy._core.multiarray import _reconstruct

from aml.data.safe_pickle import MAX_ELEMENTS, UnsafePickleError, load_pickle, save_pickle


def test_plain_data_and_numpy_round_trip(tmp_path):
    data = {"imlist": ["a", "b"], "gnd": [{"bbx": [1.0, 2.0, 3.0, 4.0], "easy": np.array([1, 2]), "junk": []}]}
    save_pickle(data, tmp_path / "gnd.pkl")
    loaded = load_pickle(tmp_path / "gnd.pkl")
    assert loaded["imlist"] == ["a", "b"] and list(loaded["gnd"][0]["easy"]) == [1, 2]


def test_pickle_that_calls_a_function_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo hacked > hacked.txt",))

    path = tmp_path / "gnd_evil.pkl"
    path.write_bytes(pickle.dumps({"gnd": Evil()}))
    with pytest.raises(UnsafePickleError, match="gnd_evil.pkl.*refusing"):
        load_pickle(path)
    assert not os.path.exists("hacked.txt")


def test_truncated_pickle_is_named(tmp_path):
    path = tmp_path / "db.pkl"
    path.write_bytes(pickle.dumps({"cids": list(range(100))})[:20])
    with pytest.raises(pickle.UnpicklingError, match="db.pkl is truncated"):
        load_pickle(path)


class _Reduces:
    """Pickles as ``function(*args)``, as a crafted file would."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


@pytest.mark.parametrize("bomb", [
    _Reduces(list, range(10 ** 8)),  # 61 bytes that would take 5 GB
    _Reduces(bytes, 10 ** 10),
    _Reduces(bytearray, MAX_ELEMENTS + 1),
], ids=["list-of-range", "bytes", "bytearray"])
def test_small_pickles_that_ask_for_gigabytes_are_refused(tmp_path, bomb):
    path = tmp_path / "gnd_bomb.pkl"
    path.write_bytes(pickle.dumps({"gnd": bomb}, protocol=4))
    assert path.stat().st_size < 100
    with pytest.raises(UnsafePickleError, match="gnd_bomb.pkl: refusing"):
        load_pickle(path)


def test_a_numpy_array_of_a_crafted_shape_is_refused(tmp_path):
    path = tmp_path / "db.pkl"
    path.write_bytes(pickle.dumps(_Reduces(_reconstruct, np.ndarray, (1 << 20, 1 << 20), b"b"), protocol=4))
    with pytest.raises(UnsafePickleError, match=r"db.pkl: refusing numpy.*_reconstruct of 1,099,511,627,776 items"):
        load_pickle(path)
    big = np.zeros(1000, dtype=np.float64)  # a real array well under the bound still loads
    save_pickle({"x": big}, tmp_path / "ok.pkl")
    assert np.array_equal(load_pickle(tmp_path / "ok.pkl")["x"], big)


def test_a_foreign_structure_is_named_not_a_traceback(tmp_path):
    path = tmp_path / "gnd_odd.pkl"
    path.write_bytes(pickle.dumps(_Reduces(dict, 5), protocol=4))  # dict(5): a TypeError inside the load
    with pytest.raises(pickle.UnpicklingError, match="gnd_odd.pkl is truncated or not a dataset pickle"):
        load_pickle(path)


def test_the_budget_counts_everything_a_file_builds_not_one_call(tmp_path):
    """A 31 KB gnd fed one ``bytes(2**25)`` to 24 ``list()`` calls and took 7.2 GB: each call
    was within the bound, all of them were not."""
    block = _Reduces(bytes, MAX_ELEMENTS)  # pickled once, referenced 24 times
    path = tmp_path / "gnd_lists.pkl"
    path.write_bytes(pickle.dumps({"imlist": [], "extra": [_Reduces(list, block) for _ in range(24)]}, protocol=4))
    assert path.stat().st_size < 1000
    with pytest.raises(UnsafePickleError, match=r"gnd_lists.pkl: refusing builtins.list of 33,554,432 items: with the "
                                                r"33,554,432 built before, more than the 33,554,432"):
        load_pickle(path)
    path.write_bytes(pickle.dumps([_Reduces(bytes, MAX_ELEMENTS // 2) for _ in range(3)], protocol=4))
    with pytest.raises(UnsafePickleError, match="refusing builtins.bytes of 16,777,216 items: with the 33,554,432"):
        load_pickle(path)


@pytest.mark.parametrize("bomb, message", [
    (_Reduces(np.ndarray, (1 << 28,)), r"numpy.ndarray of 2,147,483,648 items"),  # called directly
    (_Reduces(np.ndarray, (1 << 22,), np.dtype("complex128")), r"numpy.ndarray of 67,108,864 items"),
    (_Reduces(_reconstruct, np.ndarray, (1 << 10,), np.dtype("V65536")), r"_reconstruct of 67,108,864 items"),
    (_Reduces(str, [b"x" * 1000] * 1000), r"refusing str\(\) of a list"),
    (_Reduces(codecs.encode, "x" * 10, "zlib"), r"refusing _codecs.encode other than of text to latin1"),
], ids=["ndarray", "ndarray-dtype", "shape-times-itemsize", "str-of-a-list", "other-codec"])
def test_numpy_arrays_are_bounded_by_shape_times_item_size(tmp_path, bomb, message):
    path = tmp_path / "db.pkl"
    path.write_bytes(pickle.dumps(bomb, protocol=4))
    with pytest.raises(UnsafePickleError, match=message):
        load_pickle(path)


def test_arrays_of_every_kind_still_load(tmp_path):
    data = {"a": np.arange(12, dtype=np.int64).reshape(3, 4), "b": np.float32(2.5), "c": np.array(["x", "yz"]),
            "d": np.array([[1.0, 2.0]], order="F"), "e": set(range(5)), "f": bytearray(b"ab")}
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):  # 0 to 2 (Python 2's) write bytes by _codecs.encode
        save = tmp_path / f"p{protocol}.pkl"
        save.write_bytes(pickle.dumps(data, protocol=protocol))
        loaded = load_pickle(save)
        assert all(np.array_equal(loaded[k], v) for k, v in data.items() if isinstance(v, np.ndarray))
        assert loaded["b"] == np.float32(2.5) and loaded["e"] == set(range(5)) and loaded["f"] == bytearray(b"ab")
