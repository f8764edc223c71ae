import numpy as np
import pytest

from emshield.core import LoraFactors


def test_delta_is_scaled_product() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 6)).astype(np.float32)
    b = rng.standard_normal((5, 4)).astype(np.float32)
    f = LoraFactors(a=a, b=b, scale=2.0)
    assert f.rank == 4 and f.shape == (5, 6)
    np.testing.assert_allclose(f.delta(), 2.0 * b.astype(np.float64) @ a.astype(np.float64))


def test_refactorisation_leaves_delta_unchanged() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((3, 7)), rng.standard_normal((8, 3))
    r = rng.standard_normal((3, 3)) + 3 * np.eye(3)
    f1 = LoraFactors(a=a, b=b, scale=0.5)
    f2 = LoraFactors(a=np.linalg.solve(r, a), b=b @ r, scale=0.5)
    np.testing.assert_allclose(f1.delta(), f2.delta(), atol=1e-10)


@pytest.mark.parametrize(("a", "b"), [((3, 7), (8, 4)), ((3,), (8, 3))])
def test_bad_shapes_rejected(a, b) -> None:
    with pytest.raises(ValueError):
        LoraFactors(a=np.zeros(a), b=np.zeros(b), scale=1.0)
