"""examples/train_digits.py: the quick run, in-process, for both variants
(LeNet from cnnkernels.nn and its torch.nn twin from the same weights)."""

import importlib.util
import os

import pytest

pytest.importorskip("sklearn")

EXAMPLE = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "train_digits.py")


def _load():
    spec = importlib.util.spec_from_file_location("train_digits", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_train_digits_quick(capsys):
    res = _load().main(["--quick", "--seed", "0"])
    out, err = capsys.readouterr()
    assert res["config"]["epochs"] == 3
    # 3 epochs reach ~94% on the 360 test digits (93.9-95.0% over seeds 0-2);
    # chance is 10%.
    for name in ("ours", "torch"):
        assert res[name]["accuracy"] >= 0.85, (name, res[name])
        assert res[name]["seconds"] > 0
    # Same initial weights, batches and shifts: the two runs stay close.
    assert abs(res["ours"]["accuracy"] - res["torch"]["accuracy"]) <= 0.03, res
    assert abs(res["ours"]["loss"] - res["torch"]["loss"]) <= 0.05, res
    assert "test accuracy" in out and "torch.nn" in out
    assert "epoch  3/3" in err
