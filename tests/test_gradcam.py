"""Grad-CAM from the model file: agreement with the grad-cam package, metrics, masking, frame."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchaudio
from torch import nn

from streamer import gradcam as g
from streamer import protocol
from streamer.model import ServedModel
from tests.tiny_model import TinyModel, card

N = 48000


@pytest.fixture(scope="module")
def served(tiny_model_path) -> ServedModel:
    torch.set_num_threads(2)
    return ServedModel.load(tiny_model_path, "cpu")


@pytest.fixture(scope="module")
def eager() -> TinyModel:
    torch.manual_seed(0)  # the same weights as make_tiny_model(seed=0)
    return TinyModel().eval()


@pytest.fixture(scope="module")
def waves() -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    t = torch.arange(N) / 16000
    tone = torch.sin(2 * torch.pi * 440 * t) * (t > 1.0) * (t < 2.0)
    return torch.stack([0.05 * torch.randn(N, generator=gen) + 0.3 * tone,
                        0.05 * torch.randn(N, generator=gen),
                        0.2 * torch.randn(N, generator=gen)])


class _SpecToLogits(nn.Module):
    """The TinyModel after its front-end, so the grad-cam package sees a 2-D image input."""

    def __init__(self, m: TinyModel) -> None:
        super().__init__()
        self.conv, self.head = m.conv, m.head

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(spec).mean(dim=(2, 3)))


def _package_cam(eager: TinyModel, waves: torch.Tensor, targets: list[int]) -> np.ndarray:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with torch.no_grad():
        _, _, spec = eager.explain(waves)
    wrapper = _SpecToLogits(eager).eval()
    with GradCAM(model=wrapper, target_layers=[wrapper.conv]) as cam:
        return cam(input_tensor=spec, targets=[ClassifierOutputTarget(t) for t in targets])


@pytest.mark.timeout(60)
def test_cam_matches_grad_cam_package(served, eager, waves) -> None:
    """Same layer, same class: our CAM (scripted file and eager model) == pytorch_grad_cam's.

    Tolerance 1e-4: both are float32; the package normalises at the conv resolution and then
    resizes with OpenCV's bilinear (half-pixel centres, like torch's align_corners=False), we
    resize and then normalise (the same result, as min-max is affine and bilinear weights sum to
    one), so only rounding order and the package's +1e-7 in its denominator differ (~1e-6).
    """
    targets = [3, 0, 6]  # any class on request, not only the predicted one
    ours_scripted = g.explain_windows(served, waves, targets=targets, metrics=False)
    ours_eager = g.explain_windows(eager, waves, targets=targets, card=card(), metrics=False)
    ref = _package_cam(eager, waves, targets)
    for i in range(len(targets)):
        assert ours_scripted[i].target == targets[i]
        assert ours_scripted[i].cam.shape == ref[i].shape == (64, 301)
        np.testing.assert_allclose(ours_scripted[i].cam, ref[i], atol=1e-4)
        np.testing.assert_allclose(ours_eager[i].cam, ref[i], atol=1e-4)
        # Scripted and eager agree exactly up to float rounding.
        np.testing.assert_allclose(ours_scripted[i].cam, ours_eager[i].cam, atol=1e-6)
    # The predicted class by default.
    default = g.explain_windows(served, waves, metrics=False)
    assert [e.target for e in default] == [int(np.argmax(e.probabilities)) for e in default]
    ref_pred = _package_cam(eager, waves, [e.target for e in default])
    np.testing.assert_allclose(np.stack([e.cam for e in default]), ref_pred, atol=1e-4)


def test_cam_range_shape_and_methods(served, waves) -> None:
    for method in g.METHODS:
        expl = g.explain_windows(served, waves, explain_method=method, metrics=False)
        for e in expl:
            assert e.method == method
            assert e.cam.shape == e.spectrogram.shape == (64, 301)
            assert e.cam.dtype == np.float32
            assert e.cam.min() >= 0.0 and e.cam.max() <= 1.0
            assert e.cam.max() == pytest.approx(1.0, abs=1e-5)
            assert np.isclose(e.probabilities.sum(), 1.0, atol=1e-5)
    # vit-tokens is the same maths on a token grid; saliency is a different map.
    a = g.explain_windows(served, waves, explain_method="gradcam", metrics=False)
    b = g.explain_windows(served, waves, explain_method="vit-tokens", metrics=False)
    c = g.explain_windows(served, waves, explain_method="saliency", metrics=False)
    np.testing.assert_allclose(a[0].cam, b[0].cam, atol=1e-6)
    assert not np.allclose(a[0].cam, c[0].cam, atol=1e-2)


def test_saliency_is_input_gradient(served, waves) -> None:
    """saliency == |d logit_c / d spectrogram|, Gaussian-smoothed (scipy's filter as the
    reference), normalised; computed here by hand."""
    from scipy.ndimage import gaussian_filter

    e = g.explain_windows(served, waves[:1], targets="angry", explain_method="saliency",
                          metrics=False)[0]
    x = waves[:1].clone().requires_grad_(True)
    logits, _, spec = served.module.explain(x)
    (grad,) = torch.autograd.grad(logits[0, 0], spec)
    s = gaussian_filter(grad[0, 0].abs().double().numpy(), sigma=g.SALIENCY_SIGMA,
                        mode="nearest", truncate=3.0)
    s = (s - s.min()) / (s.max() - s.min())
    np.testing.assert_allclose(e.cam, s, atol=1e-5)
    assert e.target_name == "angry"


@pytest.mark.parametrize("sigma", [(3.0, 8.0), (1.0, 0.0), (0.0, 2.5), (0.0, 0.0)])
def test_gaussian_blur_equals_scipy(sigma) -> None:
    from scipy.ndimage import gaussian_filter

    maps = torch.rand(2, 20, 50, generator=torch.Generator().manual_seed(0)) ** 4
    got = g.gaussian_blur(maps, sigma).numpy()
    for i in range(2):
        ref = gaussian_filter(maps[i].double().numpy(), sigma=sigma, mode="nearest",
                              truncate=3.0)
        np.testing.assert_allclose(got[i], ref, atol=1e-6)
    assert torch.allclose(g.gaussian_blur(torch.full((1, 5, 7), 0.3), sigma),
                          torch.full((1, 5, 7), 0.3))


def test_bad_input_errors(served, waves) -> None:
    with pytest.raises(ValueError, match="expected waves"):
        g.explain_windows(served, torch.zeros(2, 1000))
    with pytest.raises(ValueError, match="unknown class"):
        g.explain_windows(served, waves, targets="bored")
    with pytest.raises(ValueError, match="unknown explain method"):
        g.explain_windows(served, waves, explain_method="lime")
    with pytest.raises(ValueError, match="targets for"):
        g.explain_windows(served, waves, targets=[0, 1])


def test_mel_centres_match_librosa_and_torchaudio() -> None:
    import librosa

    for htk, scale in ((True, "htk"), (False, "slaney")):
        ref = librosa.mel_frequencies(64 + 2, fmin=50.0, fmax=8000.0, htk=htk)[1:-1]
        np.testing.assert_allclose(g.mel_band_centres(64, 50.0, 8000.0, scale), ref, rtol=1e-6)
    # torchaudio's (HTK, its default) filterbank peaks sit at the nearest FFT bin to our centres.
    fb = torchaudio.functional.melscale_fbanks(257, 0.0, 8000.0, 64, 16000)
    peak_hz = fb.argmax(dim=0).numpy() * 16000 / 512
    assert np.abs(peak_hz - g.mel_band_centres(64, 0.0, 8000.0)).max() <= 16000 / 512


def test_metrics_on_a_constructed_cam() -> None:
    grid = g.spec_grid(card(), 64, 301)
    assert grid.times_s[1] == pytest.approx(0.01) and grid.times_s[-1] == pytest.approx(3.0)
    cam = np.zeros((64, 301), dtype=np.float32)
    cam[10:20, 50:100] = 1.0
    cam[30, 200] = 0.4  # below the threshold: counts for mean/entropy, not for the area
    m = g.cam_metrics(cam, grid, confidence=0.8)
    assert m.activated_area_pct == pytest.approx(100 * 500 / (64 * 301))
    assert m.mean_activation == pytest.approx(500.4 / (64 * 301))
    assert m.max_activation == 1.0
    p = np.array([1.0] * 500 + [0.4]) / 500.4
    assert m.entropy == pytest.approx(float(-(p * np.log(p)).sum()))
    assert m.focus_box == (10, 19, 50, 99)
    assert m.time_focus_range == pytest.approx((0.5, 0.99))
    centres = g.mel_band_centres(64, 0.0, 8000.0)
    assert m.freq_focus_range == pytest.approx((centres[10], centres[19]))
    assert g.cam_metrics(cam, grid, 0.8, threshold=0.3).focus_box == (10, 30, 50, 200)
    empty = g.cam_metrics(np.zeros((64, 301)), grid, 0.5)
    assert empty.activated_area_pct == 0 and empty.focus_box is None and empty.entropy == 0


class _ToneDetector(nn.Module):
    """A model with a known answer: class 0's logit is the log-energy of the 1 kHz region."""

    def __init__(self) -> None:
        super().__init__()
        self.mel = torchaudio.transforms.MelSpectrogram(16000, n_fft=512, hop_length=160,
                                                        n_mels=64, f_max=8000.0)
        centres = torch.as_tensor(g.mel_band_centres(64, 0.0, 8000.0))
        self.register_buffer("band", ((centres > 800) & (centres < 1250)).float()[:, None])
        self.scale = nn.Parameter(torch.tensor(1.0))

    def explain(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        spec = torch.log(self.mel(wave) + 1e-6).unsqueeze(1)
        acts = torch.relu(spec + 6.0) * self.scale  # energy above a floor, [B, 1, F, T]
        score = (acts[:, 0] * self.band).mean(dim=(1, 2))
        # Calibrated on this test's signals: noise alone ~0.28, with the tone ~0.44.
        logits = torch.stack([30.0 * (score - 0.36), torch.zeros_like(score)], dim=1)
        return logits, acts, spec

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.explain(wave)[0], dim=1)


@pytest.mark.timeout(60)
def test_focus_region_and_drops_on_a_known_model() -> None:
    """A 1 kHz tone from 1.0 to 2.0 s: the focus region must be there, and masking it must
    cost far more confidence than masking a random box of the same size."""
    gen = torch.Generator().manual_seed(0)
    t = torch.arange(N) / 16000
    wave = 0.3 * torch.sin(2 * torch.pi * 1000 * t) * ((t >= 1.0) & (t < 2.0))
    wave = (wave + 0.01 * torch.randn(N, generator=gen))[None]
    model = _ToneDetector().eval()
    c = dict(card(), classes=["tone", "other"])
    e = g.explain_windows(model, wave, card=c, targets=0, seed=3)[0]
    m = e.metrics
    assert m.time_focus_range[0] == pytest.approx(1.0, abs=0.05)
    assert m.time_focus_range[1] == pytest.approx(2.0, abs=0.05)
    assert m.freq_focus_range[0] <= 1000 <= m.freq_focus_range[1]
    assert m.freq_focus_range[1] - m.freq_focus_range[0] < 1000  # tone + window leakage
    assert m.confidence > 0.9
    assert m.confidence_drop > 0.5
    assert abs(m.random_drop) < 0.1
    assert m.random_box != m.focus_box


def test_mask_waves_is_exact_outside_and_in_distribution_inside() -> None:
    grid = g.spec_grid(card(), 64, 301)
    gen = torch.Generator().manual_seed(0)
    t = torch.arange(N) / 16000
    tone = 0.3 * torch.sin(2 * torch.pi * 1000 * t) * ((t >= 1.0) & (t < 2.0))
    wave = tone + 0.01 * torch.randn(N, generator=gen)
    wave = torch.cat([wave[:40000], torch.zeros(N - 40000)])[None]  # zero-padded tail
    none = g.mask_waves(wave, np.zeros((1, 64, 301), bool), grid)
    assert float((none - wave).abs().max()) < 1e-5
    mask = np.zeros((1, 64, 301), bool)
    mask[0, :, :] = True
    full = g.mask_waves(wave, mask, grid)
    mel = torchaudio.transforms.MelSpectrogram(16000, n_fft=512, hop_length=160, n_mels=64)
    before, after = torch.log(mel(wave) + 1e-6), torch.log(mel(full) + 1e-6)
    band = int(np.abs(g.mel_band_centres(64, 0.0, 8000.0) - 1000).argmin())
    assert float(after[0, band, 110:190].mean()) < float(before[0, band, 110:190].mean()) - 5
    # Not zeros: the speech part is replaced by the window's own noise floor ...
    assert float(full[0, :30000].abs().mean()) > 1e-3
    # ... and the digital silence of the padding stays silent (masking never adds energy).
    assert float(full[0, 41000:].abs().max()) < 1e-4


def test_payload_fits_and_decodes(served, waves) -> None:
    e = g.explain_windows(served, waves)[0]
    msg = g.explanation_payload(e, "s1", 7, served.card)
    text = protocol.encode(msg)
    assert len(text.encode()) <= protocol.MAX_EXPLANATION_BYTES
    back = protocol.decode(text)
    assert back["class"] == e.target_name and back["method"] == "gradcam" and back["seq"] == 7
    spec_ds, cam_ds, times, freqs = g.downsample(e)
    assert back["cam"]["shape"] == [64, 100] == list(cam_ds.shape)
    cam = protocol.decode_frame(back["cam"])
    assert np.abs(cam - cam_ds).max() <= 0.5 / 255 + 1e-6
    spec = protocol.decode_frame(back["spectrogram"])
    rng = spec_ds.max() - spec_ds.min()
    assert np.abs(spec - spec_ds).max() <= rng / 255
    assert back["axes"]["times_s"][0] < back["axes"]["times_s"][-1] <= 3.0
    assert back["axes"]["freqs_hz"][0] < back["axes"]["freqs_hz"][-1] <= 8000
    assert back["metrics"]["confidence"] == pytest.approx(float(e.probabilities[e.target]),
                                                          abs=1e-6)
    # The worst case: a 128-band, 8 kHz-hop model pools to the same 64 x 100 bound.
    big = g.Explanation("gradcam", 0, "angry", e.probabilities, np.random.rand(128, 400),
                        np.random.randn(128, 400) * 10, np.linspace(0, 3, 400),
                        np.linspace(50, 8000, 128), metrics=e.metrics)
    text = protocol.encode(g.explanation_payload(big, "a-long-stream-id-" + "x" * 40, 10**9))
    assert len(text.encode()) <= protocol.MAX_EXPLANATION_BYTES
    assert json.loads(text)["cam"]["shape"] == [64, 100]


@pytest.mark.timeout(120)
def test_cuda_matches_cpu(tiny_model_path, waves) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device here")
    cpu = g.explain_windows(ServedModel.load(tiny_model_path, "cpu"), waves, metrics=False)
    gpu = g.explain_windows(ServedModel.load(tiny_model_path, "cuda"), waves)
    for a, b in zip(cpu, gpu, strict=True):
        assert a.target == b.target
        np.testing.assert_allclose(a.cam, b.cam, atol=1e-3)
        assert b.metrics is not None and b.metrics.confidence_drop is not None


def test_survives_an_optimised_explain_elsewhere(tiny_model_path, waves) -> None:
    """TorchScript's optimising executor breaks autograd to explain()'s outputs from its 2nd
    call on; explain_windows must still work after someone else ran explain() that way."""
    m = ServedModel.load(tiny_model_path, "cpu")
    with torch.no_grad():
        for _ in range(3):
            m.module.explain(waves)
    with torch.enable_grad():
        for _ in range(2):
            m.module.explain(waves)
    ref = g.explain_windows(ServedModel.load(tiny_model_path, "cpu"), waves, metrics=False)
    for _ in range(3):  # repeated calls too (the executor optimises on the 2nd)
        got = g.explain_windows(m, waves, metrics=False)
        np.testing.assert_allclose(np.stack([e.cam for e in got]),
                                   np.stack([e.cam for e in ref]), atol=1e-6)


def test_mel_scale_from_card_or_filterbank(served) -> None:
    c = card()  # the tiny model's card says nothing; its torchaudio filterbank is HTK
    assert "mel_scale" not in c["features"]
    assert g.infer_mel_scale(served.module, c) == "htk"
    slaney = torchaudio.transforms.MelSpectrogram(16000, n_fft=512, n_mels=64,
                                                  mel_scale="slaney", norm="slaney")
    assert g.infer_mel_scale(slaney, c) == "slaney"
    assert g.infer_mel_scale(slaney, dict(c, features={**c["features"], "mel_scale": "htk"})) \
        == "htk"  # the card wins when it says
    e = g.explain_windows(served, torch.zeros(1, N), metrics=False)[0]
    assert e.mel_scale == "htk"
    np.testing.assert_allclose(e.freqs_hz, g.mel_band_centres(64, 0.0, 8000.0, "htk"))
