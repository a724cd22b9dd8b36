import numpy as np

from flaxgen.data.mixtures import grid_centers, ring_centers
from flaxgen.evaluation import class_histogram_kl, frechet_distance, mode_coverage


def test_mode_coverage_of_perfect_and_collapsed_samples():
    centers = ring_centers()
    rng = np.random.default_rng(0)
    perfect = centers[rng.integers(0, 8, 2500)] + 0.02 * rng.standard_normal((2500, 2))
    result = mode_coverage(perfect, centers, 0.02)
    assert result["modes_covered"] == 8 and result["high_quality_pct"] > 98 and result["mode_kl"] < 0.01
    collapsed = centers[[0] * 2000 + [1] * 500]  # exactly on two centres: the KL is known in closed form
    result = mode_coverage(collapsed, centers, 0.02)
    assert result["modes_covered"] == 2
    assert abs(result["mode_kl"] - (0.8 * np.log(0.8 * 8) + 0.2 * np.log(0.2 * 8))) < 1e-9
    blurry = rng.standard_normal((2500, 2)) * 3
    assert mode_coverage(blurry, grid_centers(), 0.05)["high_quality_pct"] < 20


def test_class_histogram_and_frechet_distance():
    present, kl = class_histogram_kl(np.arange(1000) % 10, 10)
    assert present == 10 and abs(kl) < 1e-12
    present, kl = class_histogram_kl(np.zeros(100, int), 10)
    assert present == 1 and abs(kl - np.log(10)) < 1e-9
    rng = np.random.default_rng(0)
    features = rng.standard_normal((5000, 4))
    assert frechet_distance(features, features) < 1e-6
    assert abs(frechet_distance(features, features + 2.0) - 16.0) < 1e-6
