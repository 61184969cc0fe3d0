"""Sampler maths, tested with an analytic denoiser.

For Gaussian data ``x0 ~ N(mu, s^2)`` (per voxel) the exact posterior mean is known in closed form,

    E[x0 | x_t] = mu + sqrt(abar) s^2 / (abar s^2 + 1 - abar) * (x_t - sqrt(abar) mu),

so the optimal epsilon / x0 / v predictor is known, and every sampler becomes an affine map of x_T plus
Gaussian noise. Its exact output law ``mu + gain (x_T - E x_T) + N(0, var)`` follows from a float64
moment recursion written here from the papers' formulas (numpy only, independent of the package). The
tests check:

* the mean against the data mean, within ``Z`` standard errors (the analytic denoiser is unbiased);
* deterministic samplers (DDIM eta 0, fast kappa 0, bridge eta 0) sample-by-sample against the exact
  affine map (float32 round-off tolerance);
* stochastic samplers' variance against the exact law, within ``Z`` standard errors of a variance;
* the data variance itself, where discretisation error is small (DDPM with all T steps; the bridge with
  all T steps), within a stated allowance plus ``Z`` standard errors. Short samplers under-disperse by
  construction with the posterior-mean denoiser (e.g. DDIM shrinks the variance by cos^2 of the
  noise-angle step at every step); the exact-law tests pin that down instead.

Samplers run in float32 on CPU with a fixed generator.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mrsynth_cli.errors import MrsynthError
from mrsynth_cli.sampling import (
    SAMPLERS,
    BridgeSchedule,
    BrownianBridgeSampler,
    DDIMSampler,
    DDPMSampler,
    FastSampler,
    NoiseSchedule,
    Sampler,
    SamplerConfigError,
    draw_noise,
    initial_noise,
    make_sampler,
    respace,
    sample,
)
from mrsynth_cli.sampling.fast import var_betas

T = 1000
N = 20_000  # samples per voxel
Z = 4.5  # tolerance in standard errors (fixed generator: the tests are deterministic)
MU = (0.4, -0.6)  # per-voxel data mean
SD = (0.5, 1.0)  # per-voxel data standard deviation
SHAPE = (N, 1, 2)  # batch, channel, voxels


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Elementwise ops on small tensors are faster on one thread (and the test machine is shared)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------------
# Independent references (numpy, float64)
# ---------------------------------------------------------------------------------------------------


def _abar_table(kind: str = "linear") -> np.ndarray:
    """abar at t = -1 .. T-1 (abar_{-1} = 1), from the papers' formulas."""
    if kind == "linear":
        betas = np.linspace(1e-4, 0.02, T)
    else:  # cosine, Nichol & Dhariwal 2021
        f = np.cos((np.arange(T + 1) / T + 0.008) / 1.008 * np.pi / 2) ** 2
        betas = np.minimum(1 - f[1:] / f[:-1], 0.999)
    return np.concatenate([[1.0], np.cumprod(1 - betas)])


def _abar(t: float, table: np.ndarray) -> float:
    """abar at a (possibly fractional) timestep: log-linear between integer steps."""
    return float(np.exp(np.interp(t, np.arange(-1, T), np.log(table))))


class GaussianDenoiser:
    """The exact predictor for x0 ~ N(mu, s^2) per voxel; records the timestep dtypes it is called with."""

    def __init__(self, prediction_type: str, table: np.ndarray) -> None:
        self.prediction_type = prediction_type
        self.table = table
        self.mu = torch.tensor(MU, dtype=torch.float64).reshape(1, 1, -1)
        self.var = torch.tensor(SD, dtype=torch.float64).reshape(1, 1, -1) ** 2
        self.t_dtypes: set[torch.dtype] = set()

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.t_dtypes.add(t.dtype)
        assert t.shape == (x_t.shape[0],) and bool((t == t[0]).all())
        a = _abar(float(t[0]), self.table)
        x = x_t.double()
        x0 = self.mu + math.sqrt(a) * self.var / (a * self.var + 1 - a) * (x - math.sqrt(a) * self.mu)
        eps = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)
        out = {"epsilon": eps, "sample": x0, "v_prediction": math.sqrt(a) * eps - math.sqrt(1 - a) * x0}
        return out[self.prediction_type].float()


def exact_law(alpha_bars: list[float], *, eta: float = 0.0, ddpm: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(gain, var) per voxel: the output is ``mu + gain (x_T - sqrt(abar_0) mu) + N(0, var)``.

    Generalised DDIM step (Song et al. 2021, eqs. 12, 16) with ``eta``, or the DDPM posterior step
    (Ho et al. 2020, eqs. 6-7, respaced) with ``ddpm`` = "fixed_small" | "fixed_large".
    """
    s2 = np.asarray(SD) ** 2
    gain, var = np.ones_like(s2), np.zeros_like(s2)
    chain = list(alpha_bars) + [1.0]
    for i in range(len(alpha_bars)):
        a, ap = chain[i], chain[i + 1]
        k = math.sqrt(a) * s2 / (a * s2 + 1 - a)  # d E[x0|x_t] / d x_t
        d_eps = (1 - math.sqrt(a) * k) / math.sqrt(1 - a)  # d eps_hat / d x_t
        if ddpm is None:
            sigma2 = eta**2 * (1 - ap) / (1 - a) * (1 - a / ap)
            coef = math.sqrt(ap) * k + math.sqrt(1 - ap - sigma2) * d_eps
        else:
            beta = 1 - a / ap
            coef = math.sqrt(ap) * beta / (1 - a) * k + math.sqrt(1 - beta) * (1 - ap) / (1 - a)
            last = i == len(alpha_bars) - 1
            sigma2 = 0.0 if last else (beta * (1 - ap) / (1 - a) if ddpm == "fixed_small" else beta)
        gain, var = coef * gain, coef**2 * var + sigma2
    return gain, var


def _start(alpha_bar0: float, generator: torch.Generator) -> torch.Tensor:
    """x_T drawn from the exact marginal q(x_{t_0}) = N(sqrt(a) mu, a s^2 + 1 - a), so only the sampler is tested."""
    mu = torch.tensor(MU).reshape(1, 1, -1)
    sd = torch.tensor(SD).reshape(1, 1, -1)
    std = torch.sqrt(alpha_bar0 * sd**2 + 1 - alpha_bar0)
    return math.sqrt(alpha_bar0) * mu + std * initial_noise(SHAPE, generator)


def _run(sampler, prediction_type: str, table: np.ndarray, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    a0 = _abar(float(sampler.timesteps[0]), table)
    x_T = _start(a0, gen)
    denoiser = GaussianDenoiser(prediction_type, table)
    out = sample(denoiser, sampler, x_T, generator=gen)
    return x_T, out, a0, denoiser


def _moments(out: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    flat = out.double().reshape(N, -1)
    return flat.mean(0).numpy(), flat.var(0).numpy()


def _check_mean(mean: np.ndarray) -> None:
    se = np.asarray(SD) / math.sqrt(N)
    assert np.all(np.abs(mean - np.asarray(MU)) < Z * se), (mean, MU)


def _check_var(var: np.ndarray, expected: np.ndarray, allowance: float = 0.0) -> None:
    """|var / expected - 1| < allowance + Z * sqrt(2 / (N - 1)) (the standard error of a Gaussian variance)."""
    rel = var / expected - 1
    assert np.all(np.abs(rel) < allowance + Z * math.sqrt(2 / (N - 1))), (var, expected)


def _assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-7, atol: float = 1e-7) -> None:
    """numpy's assert_allclose on tensors (torch.testing's first call costs seconds of lazy imports)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    np.testing.assert_allclose(actual.double().numpy(), expected.double().numpy(), rtol=rtol, atol=atol)


def _alpha_bars(sampler, table: np.ndarray) -> list[float]:
    return [_abar(float(t), table) for t in sampler.timesteps]


# ---------------------------------------------------------------------------------------------------
# Noise
# ---------------------------------------------------------------------------------------------------


def test_draw_noise_is_standard_gaussian():
    n = 1_000_000
    z = draw_noise((n,), torch.Generator().manual_seed(1)).double()
    assert z.dtype == torch.float64 and z.shape == (n,)
    assert abs(float(z.mean())) < Z / math.sqrt(n)  # SE of the mean: 1/sqrt(n)
    assert abs(float(z.var()) - 1) < Z * math.sqrt(2 / n)  # SE of the variance: sqrt(2/n)
    assert abs(float((z**4).mean()) - 3) < Z * math.sqrt(96 / n)  # Gaussian kurtosis 3 (uniform: 1.8)
    within_1sd = float((z.abs() < 1).double().mean())
    assert abs(within_1sd - 0.682689) < Z * math.sqrt(0.682689 * 0.317311 / n)


def test_draw_noise_seeded_on_generator_device_and_cast():
    a = draw_noise((4, 3), torch.Generator().manual_seed(7), device="cpu", dtype=torch.float64)
    b = draw_noise((4, 3), torch.Generator().manual_seed(7))
    assert a.dtype == torch.float64 and b.dtype == torch.float32
    assert torch.equal(a, b.double())  # drawn in float32 on the generator's device, then cast
    assert torch.equal(initial_noise((4, 3), torch.Generator().manual_seed(7)), b)
    with pytest.raises(SamplerConfigError, match="generator"):
        draw_noise((2,), None)


# ---------------------------------------------------------------------------------------------------
# Schedule
# ---------------------------------------------------------------------------------------------------


def test_beta_schedules_match_their_formulas():
    lin = NoiseSchedule(T, "linear", beta_start=1e-4, beta_end=0.02)
    assert lin.betas.dtype == torch.float64 and lin.alphas_cumprod.dtype == torch.float64
    np.testing.assert_allclose(lin.alphas_cumprod.numpy(), _abar_table("linear")[1:], rtol=1e-12)

    ldm = NoiseSchedule(T, "scaled_linear", beta_start=0.0015, beta_end=0.0195)
    roots = ldm.betas.sqrt().numpy()
    assert roots[0] == pytest.approx(math.sqrt(0.0015)) and roots[-1] == pytest.approx(math.sqrt(0.0195))
    np.testing.assert_allclose(np.diff(roots), np.diff(roots)[0], rtol=1e-9)  # linear in sqrt(beta)

    cos = NoiseSchedule(T, "cosine")
    np.testing.assert_allclose(cos.alphas_cumprod.numpy(), _abar_table("cosine")[1:], rtol=1e-12)
    assert float(cos.betas.max()) == pytest.approx(0.999)  # clipped at the end


def test_schedule_validation_suggests_names():
    with pytest.raises(SamplerConfigError, match="did you mean 'cosine'"):
        NoiseSchedule(T, "cosin")
    with pytest.raises(ValueError, match="choices: linear, scaled_linear, cosine"):
        NoiseSchedule(T, "sigmoid")
    with pytest.raises(MrsynthError, match="beta_start"):
        NoiseSchedule(T, "linear", beta_start=0.02, beta_end=1e-4)
    with pytest.raises(SamplerConfigError, match="num_train_timesteps"):
        NoiseSchedule(1)
    sched = NoiseSchedule(T)
    with pytest.raises(SamplerConfigError, match="did you mean 'v_prediction'"):
        sched.predict_x0(torch.zeros(1), torch.zeros(1), 0, "v_pred")


def test_continuous_timesteps_interpolate_and_invert():
    sched = NoiseSchedule(T, "linear")
    ints = torch.arange(-1, T)
    np.testing.assert_allclose(sched.alpha_bar_at(ints.double()).numpy(), _abar_table()[ints + 1], rtol=1e-12)
    frac = torch.tensor([-0.5, 0.25, 10.5, 500.3, 998.9], dtype=torch.float64)
    expected = [_abar(float(t), _abar_table()) for t in frac]
    np.testing.assert_allclose(sched.alpha_bar_at(frac).numpy(), expected, rtol=1e-12)
    np.testing.assert_allclose(sched.timestep_for_alpha_bar(sched.alpha_bar_at(frac)).numpy(), frac.numpy(), atol=1e-9)
    with pytest.raises(SamplerConfigError):
        sched.timestep_for_alpha_bar(1e-12)


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_prediction_type_round_trip(prediction_type):
    sched = NoiseSchedule(T, "cosine")
    gen = torch.Generator().manual_seed(3)
    x0 = torch.randn(6, 1, 4, 4, generator=gen, dtype=torch.float64)
    noise = torch.randn(6, 1, 4, 4, generator=gen, dtype=torch.float64)
    t = torch.tensor([0, 1, 250, 500, 900, 999])
    x_t = sched.q_sample(x0, t, noise)
    target = sched.training_target(x0, noise, t, prediction_type)
    _assert_close(sched.predict_x0(target, x_t, t, prediction_type), x0, rtol=0, atol=1e-9)
    _assert_close(sched.predict_eps(target, x_t, t, prediction_type), noise, rtol=0, atol=1e-9)
    # eps -> x0 -> v -> x0 chain, and v's definition (Salimans & Ho 2022)
    a = sched.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    v = a.sqrt() * noise - (1 - a).sqrt() * x0
    _assert_close(sched.v_target(x0, noise, t), v, rtol=0, atol=1e-12)
    _assert_close(sched.predict_x0(v, x_t, t, "v_prediction"), x0, rtol=0, atol=1e-9)
    # float32 inputs stay float32; an int t broadcasts
    out = sched.predict_x0(target[:1].float(), x_t[:1].float(), 250, prediction_type)
    assert out.dtype == torch.float32


# ---------------------------------------------------------------------------------------------------
# Respacing
# ---------------------------------------------------------------------------------------------------


def test_respace_kinds():
    assert respace(T, T) == list(range(T - 1, -1, -1))
    lin = respace(T, 10)
    assert lin[0] == T - 1 and lin[-1] == 0 and lin == [(i * 999) // 9 for i in range(9, -1, -1)]
    assert respace(T, 1) == [T - 1]
    quad = respace(T, 10, "quadratic")
    assert quad[0] == 800 and quad[-1] == 0 and quad == sorted(set(quad), reverse=True)
    assert respace(T, 10, "trailing") == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    for kind in ("linear", "quadratic", "trailing"):
        steps = respace(T, 20, kind)
        assert len(set(steps)) == 20 and steps == sorted(steps, reverse=True) and 0 <= min(steps) <= max(steps) < T


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((T, 0), "outside"),
        ((T, T + 1), "outside"),
        ((T, 2.5), "must be an int"),
        ((T, 50, "quadratic"), "repeats"),
        ((T, 1, "quadratic"), "at least 2"),
        ((T, 10, "quadratc"), "did you mean 'quadratic'"),
    ],
)
def test_respace_errors(args, match):
    with pytest.raises(SamplerConfigError, match=match):
        respace(*args)


# ---------------------------------------------------------------------------------------------------
# Gaussian samplers against the exact law and the data
# ---------------------------------------------------------------------------------------------------


def test_ddpm_all_steps_matches_data_distribution():
    """DDPM over all T steps: mean exact; variance within 2.5 % of s^2 (the O(beta) bias of the
    posterior-variance kernel is <= 1.6 % here) plus Z standard errors, and equal to the exact law."""
    table = _abar_table()
    sampler = DDPMSampler(NoiseSchedule(T), num_inference_steps=T)
    x_T, out, a0, _ = _run(sampler, "epsilon", table)
    mean, var = _moments(out)
    gain, extra = exact_law(_alpha_bars(sampler, table), ddpm="fixed_small")
    s2 = np.asarray(SD) ** 2
    _check_mean(mean)
    _check_var(var, s2, allowance=0.025)
    _check_var(var, gain**2 * (a0 * s2 + 1 - a0) + extra)


GAUSSIAN_CASES = {
    # id: (factory(schedule), prediction_type, law kwargs, schedule kind)
    "ddpm100-small-eps": (lambda s: DDPMSampler(s, num_inference_steps=100), "epsilon", {"ddpm": "fixed_small"}),
    "ddpm100-large-v": (
        lambda s: DDPMSampler(s, prediction_type="v_prediction", variance_type="fixed_large", num_inference_steps=100),
        "v_prediction",
        {"ddpm": "fixed_large"},
    ),
    "ddim50-eta1-x0": (
        lambda s: DDIMSampler(s, prediction_type="sample", eta=1.0, num_inference_steps=50),
        "sample",
        {"eta": 1.0},
    ),
    "ddim50-eta0.5-trailing": (
        lambda s: DDIMSampler(s, eta=0.5, spacing="trailing", num_inference_steps=50),
        "epsilon",
        {"eta": 0.5},
    ),
    "fast-step-linear-k1-10": (
        lambda s: FastSampler(s, kind="step", spacing="linear", kappa=1.0, num_inference_steps=10),
        "epsilon",
        {"eta": 1.0},
    ),
    "fast-step-quadratic-k1-20": (
        lambda s: FastSampler(s, kind="step", spacing="quadratic", kappa=1.0, num_inference_steps=20),
        "epsilon",
        {"eta": 1.0},
    ),
    "fast-var-linear-k1-10": (
        lambda s: FastSampler(s, kind="var", spacing="linear", kappa=1.0, num_inference_steps=10),
        "epsilon",
        {"eta": 1.0},
    ),
    "fast-var-quadratic-k1-20-v": (
        lambda s: FastSampler(
            s, prediction_type="v_prediction", kind="var", spacing="quadratic", kappa=1.0, num_inference_steps=20
        ),
        "v_prediction",
        {"eta": 1.0},
    ),
}


@pytest.mark.parametrize("case", list(GAUSSIAN_CASES))
def test_stochastic_samplers_match_exact_law(case):
    """Mean = data mean (Z SE); variance = the sampler's exact law (Z SE of a variance)."""
    factory, prediction_type, law = GAUSSIAN_CASES[case]
    table = _abar_table()
    sampler = factory(NoiseSchedule(T))
    _, out, a0, denoiser = _run(sampler, prediction_type, table)
    mean, var = _moments(out)
    gain, extra = exact_law(_alpha_bars(sampler, table), **law)
    s2 = np.asarray(SD) ** 2
    _check_mean(mean)
    _check_var(var, gain**2 * (a0 * s2 + 1 - a0) + extra)
    expected_dtype = torch.float32 if getattr(sampler, "kind", "") == "var" else torch.int64
    assert denoiser.t_dtypes == {expected_dtype}


DETERMINISTIC_CASES = {
    "ddim50-eps": (lambda s: DDIMSampler(s, eta=0.0, num_inference_steps=50), "epsilon", "linear"),
    "ddim50-v-cosine": (
        lambda s: DDIMSampler(s, prediction_type="v_prediction", num_inference_steps=50),
        "v_prediction",
        "cosine",
    ),
    "fast-step-linear-k0-10": (
        lambda s: FastSampler(s, kind="step", spacing="linear", num_inference_steps=10),
        "epsilon",
        "linear",
    ),
    "fast-step-quadratic-k0-20-x0": (
        lambda s: FastSampler(s, prediction_type="sample", kind="step", spacing="quadratic", num_inference_steps=20),
        "sample",
        "linear",
    ),
    "fast-var-linear-k0-10": (
        lambda s: FastSampler(s, kind="var", spacing="linear", num_inference_steps=10),
        "epsilon",
        "linear",
    ),
    "fast-var-quadratic-k0-20": (
        lambda s: FastSampler(s, kind="var", spacing="quadratic", num_inference_steps=20),
        "epsilon",
        "linear",
    ),
}


@pytest.mark.parametrize("case", list(DETERMINISTIC_CASES))
def test_deterministic_samplers_are_the_exact_affine_map(case):
    """eta = kappa = 0: every output equals mu + gain (x_T - sqrt(abar_0) mu) to float32 round-off (1e-4),
    and the mean matches the data mean (Z SE)."""
    factory, prediction_type, kind = DETERMINISTIC_CASES[case]
    table = _abar_table(kind)
    sampler = factory(NoiseSchedule(T, kind))
    x_T, out, a0, _ = _run(sampler, prediction_type, table)
    gain, extra = exact_law(_alpha_bars(sampler, table), eta=0.0)
    assert np.all(extra == 0)
    mu = torch.tensor(MU, dtype=torch.float64).reshape(1, 1, -1)
    expected = mu + torch.from_numpy(gain).reshape(1, 1, -1) * (x_T.double() - math.sqrt(a0) * mu)
    _assert_close(out.double(), expected, rtol=0, atol=1e-4)
    _check_mean(_moments(out)[0])


def test_var_schedule_matches_the_training_schedule_end_points():
    sched = NoiseSchedule(T)
    for spacing in ("linear", "quadratic"):
        betas = var_betas(sched, 10, spacing)
        assert float(betas[0]) == pytest.approx(1e-4, rel=1e-12)  # starts at the training beta_1
        assert float(torch.log1p(-betas).sum()) == pytest.approx(float(sched.alphas_cumprod[-1].log()), rel=1e-10)
        shape = betas if spacing == "linear" else betas.sqrt()
        np.testing.assert_allclose(np.diff(shape.numpy()), float(shape[1] - shape[0]), rtol=1e-9)
        sampler = FastSampler(sched, kind="var", spacing=spacing, num_inference_steps=10)
        steps = sampler.timesteps
        assert steps[0] == T - 1 and steps[-1] == 0 and steps == sorted(steps, reverse=True)
        assert any(t != int(t) for t in steps)  # fractional timesteps in between
        np.testing.assert_allclose([_abar(t, _abar_table()) for t in steps], sampler.alpha_bars, rtol=1e-9)
    with pytest.raises(SamplerConfigError, match="at least 2"):
        var_betas(sched, 1)


def test_ddim_eta1_equals_respaced_ddpm():
    """DDIM with eta = 1 is ancestral sampling of the respaced chain: same draws, same samples."""
    sched = NoiseSchedule(T)
    outs = []
    for sampler in (DDIMSampler(sched, eta=1.0, num_inference_steps=25), DDPMSampler(sched, num_inference_steps=25)):
        gen = torch.Generator().manual_seed(11)
        x_T = initial_noise((64, 1, 2), gen)
        outs.append(sample(GaussianDenoiser("epsilon", _abar_table()), sampler, x_T, generator=gen))
    _assert_close(outs[0], outs[1], rtol=0, atol=1e-5)


def test_sampling_is_reproducible_with_the_same_generator():
    sched = NoiseSchedule(T)
    denoiser = GaussianDenoiser("epsilon", _abar_table())

    def draw(sampler, seed):
        gen = torch.Generator().manual_seed(seed)
        return sample(denoiser, sampler, initial_noise((256, 1, 2), gen), generator=gen)

    ddim = DDIMSampler(sched, eta=0.0, num_inference_steps=20)
    assert torch.equal(draw(ddim, 5), draw(ddim, 5))  # bit for bit
    assert not torch.equal(draw(ddim, 5), draw(ddim, 6))
    ddpm = DDPMSampler(sched, num_inference_steps=20)
    assert torch.equal(draw(ddpm, 5), draw(ddpm, 5))
    # eta = 0 draws nothing after x_T: the generator is optional there
    x_T = initial_noise((8, 1, 2), torch.Generator().manual_seed(1))
    sample(denoiser, ddim, x_T, generator=None)
    with pytest.raises(SamplerConfigError, match="generator"):
        sample(denoiser, ddpm, x_T, generator=None)


def test_loop_callback_and_clipping():
    sched = NoiseSchedule(T)
    sampler = DDIMSampler(sched, prediction_type="sample", clip_range=(-0.25, 0.25), num_inference_steps=5)
    seen = []
    x_T = initial_noise((4, 1, 2), torch.Generator().manual_seed(0))
    out = sample(lambda x, t: x * 10, sampler, x_T, generator=None, callback=seen.append)
    assert [c["i"] for c in seen] == list(range(5)) and [c["t"] for c in seen] == sampler.timesteps
    assert set(seen[0]) == {"i", "t", "x_t", "prev_sample", "pred_x0"}
    assert all(float(c["pred_x0"].abs().max()) <= 0.25 for c in seen)
    assert torch.equal(out, seen[-1]["prev_sample"]) and torch.equal(seen[1]["x_t"], seen[0]["prev_sample"])
    _assert_close(out, seen[-1]["pred_x0"])  # the last step lands on the x0 estimate


# ---------------------------------------------------------------------------------------------------
# Brownian bridge
# ---------------------------------------------------------------------------------------------------

BRIDGE_A, BRIDGE_B, BRIDGE_S = 0.8, 0.1, 0.5  # x0 = a y + b + s u,  u ~ N(0, 1)
_M = np.linspace(0.001, 0.999, T)  # BBDM's m_t, t = 0..T-1
_DELTA = 2 * (_M - _M**2)  # max_var = 1


def _bridge_m_delta(t: int) -> tuple[float, float]:
    return (0.0, 0.0) if t == -1 else (float(_M[t]), float(_DELTA[t]))


class BridgeDenoiser:
    """The exact predictor for x0 | y ~ N(a y + b, s^2) under the bridge x_t = (1-m)x0 + m y + sqrt(delta) eps:

    x_t | y ~ N((1-m) mu_y + m y, (1-m)^2 s^2 + delta), so
    E[x0 | x_t, y] = mu_y + (1-m) s^2 / ((1-m)^2 s^2 + delta) (x_t - (1-m) mu_y - m y).
    """

    def __init__(self, y: torch.Tensor, objective: str) -> None:
        self.y = y.double()
        self.mu_y = BRIDGE_A * self.y + BRIDGE_B
        self.objective = objective

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        m, d = _bridge_m_delta(int(t[0]))
        x = x_t.double()
        x0 = self.mu_y + (1 - m) * BRIDGE_S**2 / ((1 - m) ** 2 * BRIDGE_S**2 + d) * (
            x - (1 - m) * self.mu_y - m * self.y
        )
        out = {
            "grad": x - x0,  # m (y - x0) + sqrt(delta) eps = x_t - x0
            "noise": (x - (1 - m) * x0 - m * self.y) / math.sqrt(d),
            "ysubx": self.y - x0,
            "x0": x0,
        }
        return out[self.objective].float()


def bridge_law(steps: list[int], eta: float) -> tuple[float, float]:
    """(gain, var): output - mu_y = gain * r_start + N(0, var), r_start = x_start - (1-m) mu_y - m y.

    From the bridge posterior (derived in ``bridge.py``): x_s = (1-m_s) x0 + m_s y + sqrt(delta_s - sigma^2)
    eps_hat + sigma z, sigma^2 = eta^2 delta_s (delta_t - a^2 delta_s) / delta_t, a = (1-m_t)/(1-m_s).
    """
    gain, var = 1.0, 0.0
    chain = list(steps) + [-1]
    for i in range(len(steps)):
        m_t, d_t = _bridge_m_delta(chain[i])
        m_s, d_s = _bridge_m_delta(chain[i + 1])
        k = (1 - m_t) * BRIDGE_S**2 / ((1 - m_t) ** 2 * BRIDGE_S**2 + d_t)
        a = (1 - m_t) / (1 - m_s)
        sigma2 = eta**2 * d_s * (d_t - a * a * d_s) / d_t
        coef = (1 - m_s) * k + math.sqrt(d_s - sigma2) * (1 - (1 - m_t) * k) / math.sqrt(d_t)
        gain, var = coef * gain, coef**2 * var + sigma2
    return gain, var


def _run_bridge(objective: str, steps: int, eta: float, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    y = draw_noise(SHAPE, gen)  # source images, y ~ N(0, 1)
    sampler = BrownianBridgeSampler(BridgeSchedule(), objective=objective, eta=eta, num_inference_steps=steps)
    out = sample(BridgeDenoiser(y, objective), sampler, y, generator=gen)  # x_T = y
    return y, out, sampler


@pytest.mark.parametrize("objective", ["grad", "noise", "ysubx", "x0"])
def test_bridge_matches_exact_law(objective):
    """eta = 1, 200 steps (BBDM's default): residual out - E[x0|y] has mean 0 (Z SE), variance = the exact law
    (Z SE of a variance) and no correlation with y (Z / sqrt(N))."""
    y, out, sampler = _run_bridge(objective, 200, 1.0)
    resid = (out.double() - (BRIDGE_A * y.double() + BRIDGE_B)).reshape(-1)
    n = resid.numel()
    gain, var = bridge_law(sampler.timesteps, 1.0)
    assert abs(float(resid.mean())) < Z * BRIDGE_S / math.sqrt(n)
    assert abs(float(resid.var()) / var - 1) < Z * math.sqrt(2 / (n - 1))
    corr = float(torch.corrcoef(torch.stack([resid, y.double().reshape(-1)]))[0, 1])
    assert abs(corr) < Z / math.sqrt(n)


def test_bridge_all_steps_matches_data_distribution():
    """eta = 1 over all T steps: out | y ~ N(a y + b, s^2), variance within 4 % of s^2 (the exact law's
    discretisation bias is 3.3 % here) plus Z standard errors."""
    y, out, sampler = _run_bridge("grad", T, 1.0, seed=1)
    resid = (out.double() - (BRIDGE_A * y.double() + BRIDGE_B)).reshape(-1)
    n = resid.numel()
    assert abs(float(resid.mean())) < Z * BRIDGE_S / math.sqrt(n)
    assert abs(float(resid.var()) / BRIDGE_S**2 - 1) < 0.04 + Z * math.sqrt(2 / (n - 1))
    assert abs(bridge_law(sampler.timesteps, 1.0)[1] / BRIDGE_S**2 - 1) < 0.04


def test_bridge_eta0_is_deterministic_conditional_mean():
    """eta = 0 from x_T = y: out = E[x0|y] + gain (1 - m_{T-1})(y - E[x0|y]) exactly (1e-4), within 0.03 of E[x0|y]."""
    y, out, sampler = _run_bridge("grad", 50, 0.0)
    mu_y = BRIDGE_A * y.double() + BRIDGE_B
    gain, var = bridge_law(sampler.timesteps, 0.0)
    assert var == 0
    m_start = float(_M[-1])
    _assert_close(out.double(), mu_y + gain * (1 - m_start) * (y.double() - mu_y), rtol=0, atol=1e-4)
    assert float((out.double() - mu_y).abs().max()) < 0.03


def test_bridge_schedule_forward_and_objectives():
    bs = BridgeSchedule()
    np.testing.assert_allclose(bs.m_t.numpy(), _M, rtol=1e-12)
    np.testing.assert_allclose(bs.variance_t.numpy(), _DELTA, rtol=1e-12)
    gen = torch.Generator().manual_seed(2)
    x0, y, eps = (torch.randn(5, 1, 3, 3, generator=gen, dtype=torch.float64) for _ in range(3))
    t = torch.tensor([0, 10, 500, 900, 999])
    x_t = bs.q_sample(x0, y, t, eps)
    m = bs.m_t[t].reshape(-1, 1, 1, 1)
    _assert_close(x_t, (1 - m) * x0 + m * y + (2 * (m - m**2)).sqrt() * eps)
    _assert_close(bs.objective_target(x0, y, eps, t, "grad"), x_t - x0)  # MMDM eq. 3
    for objective in ("grad", "noise", "ysubx", "x0"):
        target = bs.objective_target(x0, y, eps, t, objective)
        _assert_close(bs.predict_x0(target, x_t, y, t, objective), x0, rtol=0, atol=1e-9)
    with pytest.raises(SamplerConfigError, match="did you mean 'noise'"):
        bs.predict_x0(x0, x_t, y, t, "nois")
    with pytest.raises(SamplerConfigError, match="m_min"):
        BridgeSchedule(m_min=0.5, m_max=0.4)
    with pytest.raises(SamplerConfigError, match="max_var"):
        BridgeSchedule(max_var=0)


def test_bridge_needs_its_source_and_gaussian_noise():
    sampler = BrownianBridgeSampler(BridgeSchedule(), num_inference_steps=10)
    x = torch.zeros(2, 1, 2)
    with pytest.raises(SamplerConfigError, match="source"):
        sampler.step(x, 0, x, generator=torch.Generator())
    # one step from y = 0 with a zero x0 estimate: prev = sigma z, z Gaussian (not uniform: mean 0, kurtosis 3)
    sampler.start(torch.zeros(200_000))
    prev = sampler.step(torch.zeros(200_000), 0, torch.zeros(200_000), generator=torch.Generator().manual_seed(0))
    z = prev.prev_sample.double() / prev.prev_sample.double().std()
    assert abs(float(z.mean())) < Z / math.sqrt(2e5) and abs(float((z**4).mean()) - 3) < Z * math.sqrt(96 / 2e5)


# ---------------------------------------------------------------------------------------------------
# Registry and validation
# ---------------------------------------------------------------------------------------------------


def test_make_sampler_and_registry():
    assert set(SAMPLERS) == {"ddpm", "ddim", "fast", "bridge", "distilled"}
    ddim = make_sampler("ddim", NoiseSchedule(T), eta=0.3, num_inference_steps=10)
    assert isinstance(ddim, DDIMSampler) and ddim.eta == 0.3 and len(ddim.timesteps) == 10
    fast = make_sampler(
        "fast",
        {"num_train_timesteps": 100, "beta_schedule": "scaled_linear", "beta_start": 0.0015, "beta_end": 0.0195},
        kind="var",
        num_inference_steps=10,
    )
    assert fast.schedule.num_train_timesteps == 100
    bridge = make_sampler("bridge", {"num_train_timesteps": 200}, objective="ysubx", num_inference_steps=20)
    assert isinstance(bridge, BrownianBridgeSampler)
    for s in (ddim, fast, bridge, make_sampler("ddpm", NoiseSchedule(T), num_inference_steps=10)):
        assert isinstance(s, Sampler)
    with pytest.raises(SamplerConfigError, match="did you mean 'ddim'"):
        make_sampler("DDIM", NoiseSchedule(T))
    with pytest.raises(SamplerConfigError, match="did you mean 'fast'.*choices: ddpm, ddim, fast, bridge, distilled"):
        make_sampler("fats", NoiseSchedule(T))
    with pytest.raises(SamplerConfigError, match="did you mean 'eta'"):
        make_sampler("ddim", NoiseSchedule(T), etta=0.5)
    with pytest.raises(SamplerConfigError, match="BridgeSchedule"):
        make_sampler("bridge", NoiseSchedule(T))
    with pytest.raises(SamplerConfigError, match="NoiseSchedule"):
        make_sampler("ddpm", BridgeSchedule())


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: DDIMSampler(NoiseSchedule(T), eta=1.5), "eta"),
        (lambda: FastSampler(NoiseSchedule(T), kappa=-0.1), "kappa"),
        (lambda: FastSampler(NoiseSchedule(T), kind="VAR"), "did you mean 'var'"),
        (lambda: FastSampler(NoiseSchedule(T), spacing="trailing"), "choices: linear, quadratic"),
        (lambda: DDPMSampler(NoiseSchedule(T), variance_type="learned"), "fixed_small, fixed_large"),
        (lambda: DDPMSampler(NoiseSchedule(T), clip_range=(1, -1)), "low < high"),
        (lambda: BrownianBridgeSampler(BridgeSchedule(), eta=2), "eta"),
        (lambda: DDIMSampler(NoiseSchedule(T)).timesteps, "set_timesteps"),
        (lambda: DDIMSampler(NoiseSchedule(T), num_inference_steps=T + 1), "outside"),
        (
            lambda: DDIMSampler(NoiseSchedule(T), num_inference_steps=5).step(torch.zeros(1), 5, torch.zeros(1)),
            "t_index=5",
        ),
    ],
)
def test_sampler_validation(build, match):
    with pytest.raises(SamplerConfigError, match=match):
        build()
