"""The streaming CNN-LSTM, its augmentation and the stream protocol."""

from __future__ import annotations

import warnings

import pytest
import torch

from train.augment import AugmentConfig, augment_clip, place, spec_augment
from train.stream_eval import build_stream, evaluate_stream, voiced_mask, window_labels
from train.streaming_model import MaxPool2x2, StreamingCNNLSTM, StreamingConfig

TINY = StreamingConfig(channels=(4, 8, 8, 8), lstm_hidden=16)
N = TINY.n_samples


def _script(model: torch.nn.Module) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(model)


@pytest.fixture(scope="module")
def model() -> StreamingCNNLSTM:
    torch.manual_seed(0)
    m = StreamingCNNLSTM(TINY)
    # Non-trivial BatchNorm statistics, so eval mode is not the identity.
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
    return m.eval()


@pytest.fixture(scope="module")
def waves() -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return 0.1 * torch.randn(3, N, generator=gen)


def test_scripted_equals_eager(model: StreamingCNNLSTM, waves: torch.Tensor) -> None:
    scripted = _script(model)
    with torch.no_grad():
        assert torch.allclose(scripted(waves), model(waves), atol=1e-5)
        for a, b in zip(scripted.explain(waves), model.explain(waves), strict=True):
            assert a.shape == b.shape
            assert torch.allclose(a, b, atol=1e-5)


def test_shapes_and_probabilities(model: StreamingCNNLSTM, waves: torch.Tensor) -> None:
    with torch.no_grad():
        probs = model(waves)
        logits, acts, spec = model.explain(waves)
    assert probs.shape == (3, 7)
    assert torch.allclose(probs.sum(dim=1), torch.ones(3), atol=1e-5)
    assert (probs >= 0).all()
    assert logits.shape == (3, 7)
    assert spec.shape == (3, 1, TINY.n_mels, 1 + N // TINY.hop_length)
    assert acts.dim() == 4 and acts.shape[:2] == (3, TINY.channels[-1])
    assert acts.shape[2] == TINY.n_mels // 8 and acts.shape[3] >= 10  # a real time x freq map


def test_batch_equals_singles(model: StreamingCNNLSTM, waves: torch.Tensor) -> None:
    with torch.no_grad():
        batch = model(waves)
        singles = torch.cat([model(waves[i:i + 1]) for i in range(3)])
    assert torch.allclose(batch, singles, atol=1e-5)


@pytest.mark.parametrize("shape", [(1, N - 1), (2, N + 5), (N,), (1, 1, N)])
def test_bad_input_is_a_clear_error(model: StreamingCNNLSTM, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="expected"):
        model(torch.zeros(shape))
    scripted = _script(model)
    # TorchScript re-raises as torch.jit.Error carrying the same message.
    with pytest.raises(Exception, match=r"ValueError: expected"):
        scripted(torch.zeros(shape))


def test_gradcam_gradient_reaches_conv_map(model: StreamingCNNLSTM, waves: torch.Tensor) -> None:
    scripted = _script(model)
    with torch.jit.optimized_execution(False):
        logits, acts, _ = scripted.explain(waves)
    (grad,) = torch.autograd.grad(logits[:, 0].sum(), acts)
    assert grad.shape == acts.shape and grad.abs().sum() > 0


@pytest.mark.parametrize("shape", [(2, 3, 8, 10), (2, 3, 9, 11), (1, 1, 2, 3)])
def test_maxpool2x2_equals_maxpool2d(shape: tuple[int, ...]) -> None:
    x = torch.randn(shape, requires_grad=True)
    ours, ref = MaxPool2x2()(x), torch.nn.functional.max_pool2d(x, 2)
    assert torch.equal(ours, ref)
    g_ours, = torch.autograd.grad(ours.sum(), x)
    g_ref, = torch.autograd.grad(ref.sum(), x)
    assert torch.equal(g_ours, g_ref)  # no ties in random data: the same argmax gets it
    assert torch.equal(torch.jit.script(MaxPool2x2())(x), ref)


def test_augment_places_offsets_and_never_digital_silence() -> None:
    clip = torch.ones(16000)
    window, start = place(clip, N, 1000)
    assert start == 1000 and window[999] == 0 and window[1000] == 1 and window[17000] == 0
    window, start = place(torch.ones(N + 100), N, None)  # too long: centred crop
    assert window.numel() == N and start == -50
    gen = torch.Generator().manual_seed(0)
    speech = 0.1 * torch.randn(24000, generator=gen)
    outs = torch.stack([augment_clip(speech, N, AugmentConfig(), gen) for _ in range(8)])
    assert outs.shape == (8, N)
    assert (outs != 0).all()  # the floor fills the gaps
    assert outs.abs().max() <= 1.0
    starts = {int((o.abs() > 0.05).nonzero()[0]) for o in outs}
    assert len(starts) > 4  # offsets vary


def test_augment_snr_and_gain_follow_the_config() -> None:
    gen = torch.Generator().manual_seed(0)
    speech = 0.1 * torch.randn(N, generator=gen)
    cfg = AugmentConfig(random_offset=False, speed_p=0.0, noise_floor_dbfs=(-120.0, -120.0),
                        noise_p=1.0, snr_db=(10.0, 10.0), gain_db=(-6.0, -6.0))
    out = augment_clip(speech, N, cfg, gen)
    gain = 10 ** (-6 / 20)
    noise = out / gain - speech
    snr = 10 * torch.log10(speech.pow(2).mean() / noise.pow(2).mean())
    assert abs(float(snr) - 10.0) < 0.5


def test_spec_augment_masks() -> None:
    gen = torch.Generator().manual_seed(0)
    spec = torch.ones(2, 1, 128, 151)
    out = spec_augment(spec, AugmentConfig(freq_mask_width=10, time_mask_width=10), gen)
    assert out.shape == spec.shape and (out == 0).any() and (out == 1).any()
    assert torch.equal(spec_augment(spec, AugmentConfig.none(), gen), spec)


def test_stream_labels_follow_the_voiced_majority() -> None:
    sr = 16000
    loud = torch.cat([torch.zeros(4000), 0.5 * torch.ones(8000), torch.zeros(4000)])
    mask = voiced_mask(loud)
    assert not mask[:3600].any() and mask[4400:11600].all()
    labels = torch.full((6 * sr,), -1)
    labels[: 2 * sr] = 0
    labels[2 * sr: 3 * sr] = 1
    labels[4 * sr: 6 * sr] = 2
    starts, lab = window_labels(labels, 7, 3 * sr, sr // 2)
    assert starts.tolist()[:3] == [0, 8000, 16000]
    assert lab[0] == 0  # 2 s of class 0, 1 s of class 1
    assert lab[-1] == 2  # the last window: 2 s of class 2, nothing else voiced


def test_stream_protocol_scores_an_oracle_perfectly() -> None:
    gen = torch.Generator().manual_seed(0)
    clips = [0.3 * torch.randn(32000, generator=gen) for _ in range(6)]
    labels = [0, 1, 2, 3, 4, 5]
    stream = build_stream(clips, labels, seed=0)
    assert stream.wave.numel() == stream.labels.numel()
    assert (stream.wave != 0).all()
    window = 48000

    # An oracle that knows the ground truth of each window by its content.
    lookup = {}
    starts, lab = window_labels(stream.labels, 7, window, 8000)
    for s, lb in zip(starts.tolist(), lab.tolist(), strict=True):
        lookup[float(stream.wave[s:s + window].sum())] = lb

    def oracle(batch: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(batch.shape[0], 7)
        for i, w in enumerate(batch):
            out[i, max(0, lookup[float(w.sum())])] = 1.0
        return out

    res = evaluate_stream(oracle, stream, 7)
    assert res["n_windows"] > 5 and res["accuracy"] == 1.0
    assert "hop 0.5 s" in res["protocol"]


def test_build_stream_keeps_the_given_order_when_asked() -> None:
    """``shuffle=False`` lays the clips out in the order given (the smoothing probe's emotion
    episodes); the default shuffles them."""
    clips = [torch.full((8000,), 0.1 * (i + 1)) for i in range(5)]
    labels = [4, 0, 3, 1, 2]

    def label_order(stream) -> list[int]:
        voiced = stream.labels[stream.labels >= 0]
        return torch.unique_consecutive(voiced).tolist()

    assert label_order(build_stream(clips, labels, seed=3, shuffle=False)) == labels
    assert sorted(label_order(build_stream(clips, labels, seed=3))) == sorted(labels)
    assert label_order(build_stream(clips, labels, seed=3)) != labels


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_tiny_training_beats_chance(tess_dir) -> None:
    """A few epochs on 105 TESS clips classify 70 held-out clips well above chance (1/7)."""
    from train.corpus import EMOTIONS, load_tess
    from train.streaming_train import TrainConfig, load_clips, predict_clips, train_model

    torch.set_num_threads(1)
    utts = load_tess(tess_dir)
    gen = torch.Generator().manual_seed(0)
    by_class: dict[str, list] = {e: [] for e in EMOTIONS}
    for i in torch.randperm(len(utts), generator=gen).tolist():
        by_class[utts[i].emotion].append(utts[i])
    train_u = [u for e in EMOTIONS for u in by_class[e][:15]]
    test_u = [u for e in EMOTIONS for u in by_class[e][15:25]]
    clips = load_clips(train_u + test_u)
    y = [EMOTIONS.index(u.emotion) for u in train_u + test_u]
    cfg = TrainConfig(epochs=10, batch_size=16, lr=1e-2, augment=AugmentConfig.none())
    model = train_model(clips[:105], y[:105], TINY, cfg, progress=False)
    pred = predict_clips(model, clips[105:], N, torch.device("cpu"))
    acc = float((pred == torch.tensor(y[105:])).float().mean())
    assert acc > 0.3, acc  # chance is 1/7; 0.3 is 3.7 binomial SDs above it


def test_band_normalisation_scripts_and_removes_band_means(waves: torch.Tensor) -> None:
    from dataclasses import replace

    model = StreamingCNNLSTM(replace(TINY, norm="band")).eval()
    with torch.no_grad():
        assert torch.allclose(_script(model)(waves), model(waves), atol=1e-5)
        normed = model.normalize(model.spectrogram(waves))
    assert normed.mean(dim=3).abs().max() < 1e-4  # every mel band centred over time
    with pytest.raises(ValueError, match="norm"):
        StreamingCNNLSTM(replace(TINY, norm="bogus"))
