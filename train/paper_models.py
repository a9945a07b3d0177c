"""The two papers' models, as their text describes them, plus the logistic-regression baseline.

Paper 1 (Kumari et al.): CNN, LSTM and a hybrid CNN-LSTM on the 187-value utterance vector, and
ViT / BEiT (timm) on 128x128 log-mel images. Paper 2 (Bhuyan et al. 2025): an LSTM on
static / delta / delta-delta log-mel segments, "traditional" vs "modified". Where the papers are
ambiguous the choice is written in the class docstring.

Every torch model is wrapped by ``build_model`` as ``nn.Sequential(InputNorm, net)``: the
standardisation fitted on the training fold lives in the state_dict as buffers, so a saved
``model.pt`` takes raw features and export needs nothing else (see docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

# Paper 1's 187-value vector: MFCC 40 + chroma 12 + mel 128 + contrast 7.
VECTOR_SIZE = 187
IMAGE_SIZE = 128


class InputNorm(nn.Module):
    """(x - mean) / std with statistics fitted on the training fold, stored as buffers.

    ``shape`` is the broadcastable shape of the statistics without the batch axis, e.g. (187,)
    for vectors or (1, 128, 1) for one mean per mel band of an image.
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape))
        self.register_buffer("std", torch.ones(shape))

    def fit(self, x: torch.Tensor, dims: tuple[int, ...]) -> None:
        """Set mean/std from training data ``x`` reduced over ``dims`` (batch axis included)."""
        mean = x.mean(dim=dims, keepdim=True)[0]
        std = x.std(dim=dims, keepdim=True)[0].clamp_min(1e-6)
        self.mean.copy_(mean.reshape(self.mean.shape))
        self.std.copy_(std.reshape(self.std.shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _check_layout(layout: str) -> None:
    """The two readings of the 187-vector that PaperLSTM and PaperHybrid take."""
    if layout not in ("sequence", "step"):
        raise ValueError(f"layout must be 'sequence' or 'step', got {layout!r}")


class PaperCNN(nn.Module):
    """Paper 1's CNN on the 187-vector (Table 1: 95.37 %).

    Conv1D 32 filters k3 -> max-pool 2 -> flatten -> dense 128 relu -> dropout 0.2 -> dense 64
    -> dropout -> softmax. Choices where the text is silent or garbled: the conv uses ReLU and
    'valid' padding (Keras defaults plus the usual activation), dense 64 uses ReLU, its dropout
    rate is 0.2 like the first. The vector is read as a 187-step sequence of one channel (Keras
    ``input_shape=(187, 1)``). The softmax is folded into the loss (logits out).
    """

    def __init__(
        self,
        n_classes: int = 7,
        n_features: int = VECTOR_SIZE,
        filters: int = 32,
        kernel: int = 3,
        dense: tuple[int, int] = (128, 64),
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv1d(1, filters, kernel), nn.ReLU(), nn.MaxPool1d(2))
        flat = filters * ((n_features - kernel + 1) // 2)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, dense[0]),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(dense[0], dense[1]),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(dense[1], n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x.unsqueeze(1)))


class PaperLSTM(nn.Module):
    """Paper 1's LSTM on the 187-vector (Table 1: 98.57 %).

    LSTM 128 (return sequences) -> LSTM 64 (last step) -> dense 64 relu -> dropout 0.3 ->
    softmax. The paper does not give the input shape. Default ``layout="sequence"``: the
    vector is a 187-step sequence of one value per step (Keras ``(187, 1)``, the shape its
    Conv1D models need). ``layout="step"``: one time step of 187 values (Keras ``(1, 187)``),
    the other reading, under which the LSTMs act as gated dense layers.
    """

    def __init__(
        self,
        n_classes: int = 7,
        hidden: tuple[int, int] = (128, 64),
        dense: int = 64,
        dropout: float = 0.3,
        layout: str = "sequence",
        n_features: int = VECTOR_SIZE,
    ) -> None:
        super().__init__()
        _check_layout(layout)
        self.layout = layout
        self.lstm1 = nn.LSTM(1 if layout == "sequence" else n_features, hidden[0],
                             batch_first=True)
        self.lstm2 = nn.LSTM(hidden[0], hidden[1], batch_first=True)
        self.head = nn.Sequential(
            nn.Linear(hidden[1], dense), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dense, n_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq, _ = self.lstm1(x.unsqueeze(-1) if self.layout == "sequence" else x.unsqueeze(1))
        seq, _ = self.lstm2(seq)
        return self.head(seq[:, -1])


class PaperHybrid(nn.Module):
    """Paper 1's hybrid CNN-LSTM on the 187-vector (Table 1: 99.01 %, the paper's best).

    Conv1D 64 k3 relu -> max-pool 2 -> dropout 0.2 -> LSTM 128 (return_sequences=False) ->
    dense softmax. The text lists the LSTM before the pooling; Figure 2 and the only order that
    type-checks put conv -> pool -> dropout -> LSTM, which is what this does.
    ``bidirectional=True`` (not the paper's) reads the sequence both ways and classifies both
    final states.

    ``layout`` as for :class:`PaperLSTM`: ``"sequence"`` (default) reads the vector as 187 steps
    of one channel (Keras ``(187, 1)``, 'valid' conv and pooling). ``"step"`` reads it as one
    step of 187 channels (Keras ``(1, 187)``), which Keras only accepts with 'same' padding in
    the conv and the pooling; there the k3 conv reduces to its centre tap (a dense 187 -> 64
    layer) and the pooling to the identity, so the "CNN" part is nominal.
    """

    def __init__(
        self,
        n_classes: int = 7,
        filters: int = 64,
        kernel: int = 3,
        hidden: int = 128,
        dropout: float = 0.2,
        bidirectional: bool = False,
        layout: str = "sequence",
        n_features: int = VECTOR_SIZE,
    ) -> None:
        super().__init__()
        _check_layout(layout)
        self.layout = layout
        if layout == "sequence":
            conv, pool = nn.Conv1d(1, filters, kernel), nn.MaxPool1d(2)
        else:  # Keras padding="same" for an odd kernel; ceil_mode keeps the one step
            conv = nn.Conv1d(n_features, filters, kernel, padding=kernel // 2)
            pool = nn.MaxPool1d(2, ceil_mode=True)
        self.conv = nn.Sequential(conv, nn.ReLU(), pool, nn.Dropout(dropout))
        self.lstm = nn.LSTM(filters, hidden, batch_first=True, bidirectional=bidirectional)
        self.out = nn.Linear(hidden * (2 if bidirectional else 1), n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unsqueeze(1) if self.layout == "sequence" else x.unsqueeze(-1)  # [B, C, T]
        feats = self.conv(x).transpose(1, 2)  # [B, T', filters]
        _, (h, _) = self.lstm(feats)  # final state of each direction: [dirs, B, hidden]
        return self.out(h.transpose(0, 1).reshape(h.size(1), -1))


class MelLSTM(nn.Module):
    """Paper 2's LSTM on [B, 3, 64, T] static / delta / delta-delta log-mel segments.

    Each frame's 3 x 64 values are one LSTM step. ``variant``:

    - ``"modified"`` (the paper's proposed model): LSTM 256 -> dense 128 relu -> dropout 0.2 ->
      dense 64 relu -> dropout 0.2 -> softmax. The paper prints only a parameter count
      (305,799); exactly this stack on a one-value-per-step input has 305,799 parameters in
      Keras (torch counts 1,024 more: a second LSTM bias), so we take it as the paper's layer
      structure (here fed 192 values per step).
    - ``"traditional"`` (the paper's "old version", 77,160 parameters, layers not given): one
      LSTM 128 -> softmax, no dense head. No common stack matches 77,160 exactly; this is our
      reading of "traditional" as the plain single-layer LSTM classifier.
    """

    def __init__(
        self,
        n_classes: int = 7,
        n_mels: int = 64,
        channels: int = 3,
        variant: str = "modified",
        hidden: int | None = None,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if variant not in ("modified", "traditional"):
            raise ValueError(f"variant must be 'modified' or 'traditional', got {variant!r}")
        self.variant = variant
        size = channels * n_mels
        if variant == "modified":
            hidden = hidden or 256
            self.lstm = nn.LSTM(size, hidden, batch_first=True)
            self.head = nn.Sequential(
                nn.Linear(hidden, 128),
                nn.ReLU(),
                nn.Dropout(dropout),
                nn.Linear(128, 64),
                nn.ReLU(),
                nn.Dropout(dropout),
                nn.Linear(64, n_classes),
            )
        else:
            hidden = hidden or 128
            self.lstm = nn.LSTM(size, hidden, batch_first=True)
            self.head = nn.Sequential(nn.Linear(hidden, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, f, t = x.shape
        seq, _ = self.lstm(x.reshape(b, c * f, t).transpose(1, 2))
        return self.head(seq[:, -1])


def _vit(n_classes: int = 7, **config: Any) -> nn.Module:
    """timm ViT on [B, 1, 128, 128] log-mel images, from scratch by default.

    The paper fine-tuned a pretrained ViT (98 %). No weights can be downloaded here, so the
    default is a small ViT (patch 16 -> 64 patches, width 96, depth 4, 4 heads: ~0.5 M
    parameters) that trains on a shared 2-core CPU; ``--init-weights FILE`` loads a local
    checkpoint (see ``load_init_weights``; pass ``--model-config`` matching its architecture).
    """
    from timm.models.vision_transformer import VisionTransformer

    cfg = dict(img_size=IMAGE_SIZE, patch_size=16, in_chans=1, embed_dim=96, depth=4, num_heads=4)
    cfg.update(config)
    return VisionTransformer(num_classes=n_classes, **cfg)


def _beit(n_classes: int = 7, **config: Any) -> nn.Module:
    """timm BEiT on [B, 1, 128, 128] log-mel images, from scratch by default (paper: 98.3 %,
    pretrained). Same small size as the ViT, relative position bias as in BEiT."""
    from timm.models.beit import Beit

    cfg = dict(
        img_size=IMAGE_SIZE,
        patch_size=16,
        in_chans=1,
        embed_dim=96,
        depth=4,
        num_heads=4,
        use_abs_pos_emb=False,
        use_rel_pos_bias=True,
    )
    cfg.update(config)
    return Beit(num_classes=n_classes, **cfg)


def keras_init(net: nn.Module) -> nn.Module:
    """Re-initialise ``net`` as Keras builds the same layers, since the papers trained in Keras.

    Dense and Conv1D: Glorot-uniform kernels, zero biases. LSTM: Glorot-uniform input kernel,
    orthogonal recurrent kernel, zero biases except the forget gate's, set to 1 (Keras's
    ``unit_forget_bias``; gate order i, f, g, o is the same in both). PyTorch's defaults
    (uniform +-1/sqrt(fan) everywhere, forget bias 0) make the 93- and 187-step LSTMs of
    paper 1 much slower to train.
    """
    for mod in net.modules():
        if isinstance(mod, nn.Linear | nn.Conv1d):
            nn.init.xavier_uniform_(mod.weight)
            if mod.bias is not None:
                nn.init.zeros_(mod.bias)
        elif isinstance(mod, nn.LSTM):
            for name, param in mod.named_parameters():
                if name.startswith("weight_ih"):  # [4h, in]: Glorot limit sqrt(6 / (in + 4h))
                    nn.init.xavier_uniform_(param)
                elif name.startswith("weight_hh"):  # [4h, h]: Keras's [h, 4h], transposed
                    nn.init.orthogonal_(param)
                elif name.startswith("bias"):
                    nn.init.zeros_(param)
                    if name.startswith("bias_ih"):
                        param.data.chunk(4)[1].fill_(1.0)
    return net


@dataclass(frozen=True)
class ModelSpec:
    """How a paper trains one model: its input feature, epochs, optimiser settings."""

    name: str
    feature: str  # "vector" (187), "image" (1x128x128 log-mel) or "delta" (3x64x64)
    epochs: int
    lr: float
    batch_size: int
    paper: str
    paper_accuracy: float | None
    paper_metrics: dict[str, float] = field(default_factory=dict)
    paper_metric_kind: str = "held-out (5-fold stratified CV)"
    build: Callable[..., nn.Module] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    tiny: dict[str, Any] = field(default_factory=dict)  # config for smoke tests


FEATURE_SHAPES: dict[str, tuple[int, ...]] = {
    "vector": (VECTOR_SIZE,),
    "image": (1, IMAGE_SIZE, IMAGE_SIZE),
    "delta": (3, 64, 64),
}

_P1 = "Kumari et al., paper 1"
_P2 = "Bhuyan et al. 2025, paper 2"

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "logreg", "vector", 0, 0.0, 0, "baseline (not in the papers)", None,
        ),
        ModelSpec(
            "cnn", "vector", 50, 1e-3, 32, f"{_P1}, Tables 1-2", 0.9537,
            {"precision": 0.9530, "recall": 0.9530, "f1": 0.9537},
            build=PaperCNN, tiny={"filters": 8, "dense": (16, 8)},
        ),
        ModelSpec(
            "lstm", "vector", 30, 1e-3, 32, f"{_P1}, Tables 1-2", 0.9857,
            {"precision": 0.9855, "recall": 0.9856, "f1": 0.9857},
            build=PaperLSTM, tiny={"hidden": (8, 8), "dense": 8},
        ),
        ModelSpec(
            "hybrid", "vector", 50, 1e-3, 32, f"{_P1}, Tables 1-2", 0.9901,
            {"precision": 0.9930, "recall": 0.9929, "f1": 0.9929},
            build=PaperHybrid, tiny={"filters": 8, "hidden": 8},
        ),
        ModelSpec(
            "vit", "image", 20, 1e-4, 32, f"{_P1}, Tables 3-4 (pretrained ViT)", 0.98,
            {"precision": 0.98, "recall": 0.98, "f1": 0.98},
            build=_vit, tiny={"embed_dim": 16, "depth": 1, "num_heads": 2, "patch_size": 32},
        ),
        ModelSpec(
            "beit", "image", 20, 1e-3, 32, f"{_P1}, Tables 3-4 (pretrained BEiT)", 0.983,
            {"precision": 0.9831, "recall": 0.9830, "f1": 0.9830},
            build=_beit, tiny={"embed_dim": 16, "depth": 1, "num_heads": 2, "patch_size": 32},
        ),
        ModelSpec(
            "mel-lstm", "delta", 100, 1e-3, 32, f"{_P2}, Table 2 (modified LSTM)", 1.0,
            paper_metric_kind="TRAINING-set accuracy at epoch 100 (no held-out figure given)",
            build=MelLSTM, config={"variant": "modified"},
            tiny={"variant": "modified", "hidden": 8},
        ),
        ModelSpec(
            "mel-lstm-traditional", "delta", 100, 1e-3, 32,
            f"{_P2}, Table 2 (traditional LSTM)", 0.4236,
            paper_metric_kind="TRAINING-set accuracy at epoch 100 (no held-out figure given)",
            build=MelLSTM, config={"variant": "traditional"},
            tiny={"variant": "traditional", "hidden": 8},
        ),
    )
}


def norm_shape(feature: str) -> tuple[int, ...]:
    """Shape of the InputNorm statistics: per value for vectors, per (channel, mel band) for
    spectrogram images (one statistic along time, so shifts in time do not matter)."""
    shape = FEATURE_SHAPES[feature]
    return shape if feature == "vector" else (shape[0], shape[1], 1)


def build_model(name: str, n_classes: int = 7, **config: Any) -> nn.Sequential:
    """``nn.Sequential(InputNorm, net)`` for a torch model named in ``MODELS``.

    ``config`` overrides the spec's defaults (e.g. the tiny configs in tests); the full config
    is what ``config.json`` stores so export can rebuild the same module.
    """
    spec = MODELS.get(name)
    if spec is None or spec.build is None:
        torch_models = ", ".join(n for n, s in MODELS.items() if s.build is not None)
        raise ValueError(f"unknown torch model {name!r}; choose from {torch_models}")
    cfg = {**spec.config, **config}
    if "dense" in cfg and isinstance(cfg["dense"], list):
        cfg["dense"] = tuple(cfg["dense"])
    if "hidden" in cfg and isinstance(cfg["hidden"], list):
        cfg["hidden"] = tuple(cfg["hidden"])
    init = cfg.pop("init", "torch")
    net = spec.build(n_classes=n_classes, **cfg)
    if init == "keras":
        keras_init(net)
    elif init != "torch":
        raise ValueError(f"init must be 'keras' or 'torch', got {init!r}")
    return nn.Sequential(InputNorm(norm_shape(spec.feature)), net)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def load_init_weights(model: nn.Sequential, path: str | Path) -> dict[str, list[str]]:
    """Start a ViT/BEiT from a local checkpoint (e.g. an ImageNet timm state_dict).

    Accepts a bare state_dict or one under "state_dict"/"model". Adapts what differs from our
    128x128 one-channel input: RGB patch-embedding weights are summed to one channel (timm's
    ``adapt_input_conv``), absolute position embeddings are resampled to the new grid, and the
    classifier head is dropped when the class count differs. Returns the missing / unexpected /
    skipped keys so the run can record them.
    """
    net = model[1]
    blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    if isinstance(blob, dict):
        for key in ("state_dict", "model"):
            if key in blob and isinstance(blob[key], dict):
                blob = blob[key]
                break
    if not isinstance(blob, dict):
        raise ValueError(f"{path}: not a state_dict checkpoint")
    own = net.state_dict()
    state: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    for key, value in blob.items():
        key = key.removeprefix("module.")
        if key not in own:
            state[key] = value
            continue
        target = own[key]
        if key == "patch_embed.proj.weight" and value.shape[1] != target.shape[1]:
            from timm.models import adapt_input_conv

            value = adapt_input_conv(target.shape[1], value)
        if key == "pos_embed" and value.shape != target.shape:
            from timm.layers import resample_abs_pos_embed

            prefix = getattr(net, "num_prefix_tokens", 1)
            grid = net.patch_embed.grid_size
            value = resample_abs_pos_embed(value, list(grid), num_prefix_tokens=prefix)
        if value.shape != target.shape:
            skipped.append(key)
            continue
        state[key] = value
    result = net.load_state_dict(state, strict=False)
    return {
        "missing": list(result.missing_keys),
        "unexpected": list(result.unexpected_keys),
        "skipped_shape_mismatch": skipped,
    }
