import math

import pytest
import torch

from aml.layers import GeM, GeMmp, L2N, POOLINGS, Rpool, gem, l2n, mac, rmac, spoc
from aml.layers.functional import rmac_regions
from aml.layers.functional import roipool as LF_roipool


def feature_map():
    return torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])


def test_gem_matches_hand_computed_value():
    out = gem(feature_map(), torch.tensor([3.0]))
    assert out.item() == pytest.approx(((1 + 8 + 27 + 64) / 4) ** (1 / 3), abs=1e-6)
    assert out.item() == pytest.approx(2.9240177382, abs=1e-6)


def test_gem_clamps_below_eps_and_p1_is_average():
    x = torch.tensor([[[[-5.0, 2.0], [3.0, 4.0]]]])
    assert gem(x, torch.tensor([1.0])).item() == pytest.approx((1e-6 + 2 + 3 + 4) / 4, abs=1e-6)


def test_gem_module_has_learnable_p_initialised_to_three():
    pool = GeM()
    assert pool.p.requires_grad and pool.p.item() == 3.0 and pool.eps == 1e-6
    pool(feature_map()).sum().backward()
    assert pool.p.grad is not None


def test_gemmp_uses_one_p_per_channel():
    pool = GeMmp(mp=2)
    pool.p.data = torch.tensor([1.0, 2.0])
    x = torch.cat([feature_map(), feature_map()], dim=1)
    out = pool(x).flatten()
    assert out[0].item() == pytest.approx(2.5, abs=1e-6)
    assert out[1].item() == pytest.approx(math.sqrt((1 + 4 + 9 + 16) / 4), abs=1e-6)


def test_mac_and_spoc():
    assert mac(feature_map()).item() == 4.0
    assert spoc(feature_map()).item() == 2.5


def test_l2n_divides_by_norm_plus_eps():
    x = torch.tensor([[3.0, 4.0]])
    assert torch.allclose(l2n(x), torch.tensor([[3 / (5 + 1e-6), 4 / (5 + 1e-6)]]))
    assert torch.allclose(L2N()(x), l2n(x))


def test_rmac_regions_cover_square_map_at_three_levels():
    regions = rmac_regions(10, 10, 3)
    assert (0, 0, 10) in regions  # level 1: whole map
    assert len(regions) == 1 + 4 + 9
    assert all(t + s <= 10 and l + s <= 10 for t, l, s in regions)


def test_rmac_adds_regions_along_the_long_side():
    regions = rmac_regions(6, 12, 1)
    assert len(regions) > 1 and all(s == 6 for _, _, s in regions)


def test_rmac_on_constant_map_is_sum_of_unit_vectors():
    x = torch.ones(1, 4, 6, 6)
    out = rmac(x).flatten()
    count = 1 + len(rmac_regions(6, 6, 3))
    assert torch.allclose(out, torch.full((4,), count * 0.5), atol=1e-4)


def test_rpool_output_is_unit_norm():
    pool = Rpool(GeM(), whiten=torch.nn.Linear(8, 8))
    out = pool(torch.rand(2, 8, 7, 9))
    assert out.shape == (2, 8, 1, 1)
    assert torch.allclose(out.flatten(1).norm(dim=1), torch.ones(2), atol=1e-5)


def test_registry_builds_every_pooling():
    for name, factory in POOLINGS.items():
        assert factory(4)(torch.rand(1, 4, 5, 5)).shape == (1, 4, 1, 1), name


def test_rmac_region_starts_are_rounded_in_float32_as_cirtorch():
    """On a 34 x 5 map the second level's 8 regions of side 3 start every 31/7 rows; 7 x 31/7 is
    31 in float64 but 30.99999 in cirtorch's float32, whose last region starts at row 30."""
    level2 = [top for top, left, side in rmac_regions(34, 5, 3) if side == 3 and left == 0]
    assert level2 == [0, 4, 8, 13, 17, 22, 26, 30]
    level2 = [left for top, left, side in rmac_regions(5, 34, 3) if side == 3 and top == 0]
    assert level2 == [0, 4, 8, 13, 17, 22, 26, 30]  # the same along the width


def test_the_pooling_modules_keep_cirtorchs_signatures():
    """RMAC(L=3) and Rpool(GeM(), L=3) failed (the argument was renamed), and cirtorch's
    extract_ssr calls Rpool(x, aggregate=False) for the regional descriptors."""
    import inspect

    from aml.layers import GeM, PowerLaw, RMAC, Rpool

    assert list(inspect.signature(RMAC).parameters) == ["L", "eps"]
    assert list(inspect.signature(Rpool).parameters) == ["rpool", "whiten", "L", "eps"]
    x = torch.rand(2, 4, 6, 9)
    pool = Rpool(GeM(), L=2)
    regions = pool(x, aggregate=False)
    assert pool.L == 2 and RMAC(L=2).L == 2
    assert regions.shape == (2, 1 + len(rmac_regions(6, 9, 2)), 4, 1, 1)
    assert torch.allclose(regions.norm(dim=2), torch.ones(2, regions.shape[1], 1, 1), atol=1e-5)
    summed = regions.sum(dim=1)
    assert torch.allclose(pool(x), summed / (summed.norm(dim=1, keepdim=True) + 1e-6), atol=1e-6)
    assert torch.allclose(PowerLaw()(torch.tensor([4.0, -9.0])), torch.tensor([2.0, -3.0]), atol=1e-5)


def test_the_pooling_modules_read_as_cirtorchs():
    """GeMmp had no .mp, RMAC and PowerLaw printed without their arguments, and Rpool's eps
    changed its normalisations (cirtorch's keep L2N's own 1e-6)."""
    from aml.layers import MAC, PowerLaw, RMAC

    assert GeMmp(mp=8).mp == 8 and repr(GeMmp(mp=8)) == "GeMmp(p=[8], eps=1e-06)"
    assert repr(RMAC()) == "RMAC(L=3)" and repr(PowerLaw()) == "PowerLaw(eps=1e-06)"
    x = torch.rand(1, 4, 6, 9)
    regions = LF_roipool(x, MAC(), 3, 1e-2).flatten(2)  # the regions pooled with eps 1e-2
    unit = regions / (regions.norm(dim=-1, keepdim=True) + 1e-6)
    summed = unit.sum(dim=1)
    expected = summed / (summed.norm(dim=1, keepdim=True) + 1e-6)
    assert torch.allclose(Rpool(MAC(), eps=1e-2)(x).flatten(1), expected, atol=1e-7)
