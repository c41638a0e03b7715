"""The stage protocol: 0.3's stages take 0.2's steps, and the loop needs no
knowledge of which stage is which."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from tests import reference_steps

pytestmark = pytest.mark.slow  # 11 configurations, each compiled over 64 problems

DATA = pathlib.Path(__file__).resolve().parent / "data" / "steps_0_2.npz"
# Configurations whose evaluation order changed, equal to rounding only:
# none so far (every path that `tests.reference_steps` runs kept its order).
ROUNDING: dict[str, float] = {}


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(DATA) as data:
        return dict(data)


@pytest.mark.parametrize("name", sorted(reference_steps.CONFIGS))
def test_the_steps_are_those_of_0_2(name: str, reference) -> None:
    now = reference_steps.trajectory(name)
    keys = sorted(k.split("/", 1)[1] for k in reference if k.startswith(name + "/"))
    assert sorted(now) == keys
    for key in keys:
        want, got = reference[f"{name}/{key}"], now[key]
        if name in ROUNDING:
            np.testing.assert_allclose(got, want, rtol=ROUNDING[name], err_msg=key)
        else:
            np.testing.assert_array_equal(got, want, err_msg=f"{name}: {key}")
