"""Properties of the SLAO merge functions (pure tensor math, no model)."""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from backpropagate_core.errors import BackpropError
from backpropagate_core.training.merge import (SCHEDULES, check_finite, lambda_schedule, orthonormal_init,
                                               slao_init, slao_merge)

KEY_A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
KEY_B = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"

finite = st.floats(-100, 100, allow_nan=False, width=32)
seeds = st.integers(0, 2**31 - 1)
# Timing says nothing about correctness here, and the CPUs are shared: no deadline.
relaxed = settings(deadline=None, max_examples=60)


def random_adapter(seed: int, r: int = 4, n_in: int = 12, n_out: int = 10, scale: float = 1.0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {KEY_A: torch.randn(r, n_in, generator=gen) * scale,
            KEY_B: torch.randn(n_out, r, generator=gen) * scale}


@relaxed
@given(seed=seeds, r=st.integers(1, 8), extra=st.integers(0, 24), scale=st.floats(1e-3, 1e3))
def test_orthonormal_init_has_orthonormal_rows_spanning_a(seed, r, extra, scale):
    a = torch.randn(r, r + extra, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale
    q = orthonormal_init(a)
    assert q.shape == a.shape
    assert torch.allclose(q @ q.T, torch.eye(r, dtype=q.dtype), atol=1e-8)
    # Same row space: projecting A onto the rows of Q gives A back.
    assert torch.allclose(a @ q.T @ q, a, atol=1e-6 * scale * (r + extra))


@relaxed
@given(seed=seeds)
def test_orthonormal_init_is_deterministic_and_sign_corrected(seed):
    a = torch.randn(4, 16, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    q = orthonormal_init(a)
    assert torch.equal(q, orthonormal_init(a.clone()))
    # Sign correction: each basis row has a non-negative component along the matching row of A.
    r_diag = torch.diagonal(q @ a.T)
    assert (r_diag >= 0).all()


def test_orthonormal_init_refuses_rank_above_input_size():
    with pytest.raises(BackpropError) as err:
        orthonormal_init(torch.randn(8, 4))
    assert err.value.code == "CONFIG_INVALID"


@relaxed
@given(kind=st.sampled_from(SCHEDULES), c=st.floats(1e-6, 1.0), i=st.integers(1, 10_000))
def test_lambda_schedule_is_bounded_and_non_increasing(kind, c, i):
    now, later = lambda_schedule(i, kind, c), lambda_schedule(i + 1, kind, c)
    assert 0.0 < later <= now <= 1.0


def test_lambda_schedule_values():
    assert lambda_schedule(4, "inv_sqrt") == 0.5
    assert lambda_schedule(4, "inv") == 0.25
    assert lambda_schedule(4, "constant", 0.3) == 0.3
    with pytest.raises(BackpropError):
        lambda_schedule(2, "cosine")
    with pytest.raises(BackpropError):
        lambda_schedule(2, "constant", 1.5)


@relaxed
@given(seed=seeds, i=st.integers(1, 50), kind=st.sampled_from(SCHEDULES))
def test_merging_an_adapter_with_itself_is_the_identity(seed, i, kind):
    adapter = random_adapter(seed)
    merged = slao_merge(adapter, {k: v.clone() for k, v in adapter.items()}, i, kind)
    for key in adapter:
        assert torch.equal(merged[key], adapter[key])


@relaxed
@given(seed=seeds, i=st.integers(2, 50))
def test_merge_replaces_a_and_steps_b_by_lambda(seed, i):
    old, new = random_adapter(seed), random_adapter(seed + 1)
    merged = slao_merge(old, new, i, "inv_sqrt")
    lam = 1 / math.sqrt(i)
    assert torch.equal(merged[KEY_A], new[KEY_A])
    assert torch.allclose(merged[KEY_B], old[KEY_B] + lam * (new[KEY_B] - old[KEY_B]), atol=1e-6)


@relaxed
@given(seed=seeds, i=st.integers(1, 1000), kind=st.sampled_from(SCHEDULES),
       scale=st.floats(1e-6, 1e6))
def test_finite_adapters_merge_to_finite_adapters(seed, i, kind, scale):
    merged = slao_merge(random_adapter(seed, scale=scale), random_adapter(seed + 1, scale=scale), i, kind)
    for value in merged.values():
        assert torch.isfinite(value).all()


@relaxed
@given(seed=seeds, bad=st.sampled_from([math.nan, math.inf, -math.inf]),
       which=st.sampled_from([KEY_A, KEY_B]), where=st.sampled_from(["new", "merged"]))
def test_non_finite_input_is_refused_and_previous_merge_kept(seed, bad, which, where):
    merged, new = random_adapter(seed), random_adapter(seed + 1)
    # The merged A is replaced, never read, so a bad value there cannot reach the result.
    target = merged if where == "merged" and which == KEY_B else new
    target[which][0, 0] = bad
    before = {k: v.clone() for k, v in merged.items()}
    with pytest.raises(BackpropError) as err:
        slao_merge(merged, new, 3)
    assert err.value.code == "MERGE_NONFINITE"
    for key in before:
        assert torch.allclose(merged[key], before[key], rtol=0, atol=0, equal_nan=True)


def test_slao_init_orthonormalises_a_and_keeps_last_b():
    merged, last = random_adapter(1), random_adapter(2)
    init = slao_init(merged, last)
    assert torch.equal(init[KEY_A], orthonormal_init(merged[KEY_A]))
    assert torch.equal(init[KEY_B], last[KEY_B])


def test_a_non_finite_merge_is_refused():
    with pytest.raises(BackpropError):
        check_finite({KEY_B: torch.tensor([math.nan])}, "x")
