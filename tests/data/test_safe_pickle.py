import os
import pickle

import numpy as np
import pytest

from aml.data.safe_pickle import UnsafePickleError, load_pickle, save_pickle


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
