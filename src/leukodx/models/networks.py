"""Networks the review's papers built themselves, registered into timm's model registry.

Registering them (``timm.models.register_model``) lets ``create_network`` build them exactly like
a timm architecture, so the one trainer, exporter and bundle format serve every recipe. Each
exposes ``get_classifier()`` (the final linear layer) so that feature recipes can read the
penultimate activations of any network the same way.

Where a paper leaves a detail open, the reading chosen is stated in the class docstring.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models import register_model
from timm.models.regnet import RegNet
from torch import nn
from leukodx.errors import InvalidInputError

_TIMM_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "drop_rate", "drop_path_rate")


def _clean(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if k not in _TIMM_KWARGS}


def _no_pretrained(name: str, pretrained: bool) -> None:
    if pretrained:
        raise InvalidInputError(f"{name}: no published weights exist for this paper's network; train it here")


def _conv(cin: int, cout: int, k: int = 3, stride: int = 1, bn: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, bias=not bn)]
    if bn:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class _Classifier(nn.Module):
    """Shared tail: features -> global pool -> (hidden FC layers) -> ``fc``."""

    def __init__(self, width: int, hidden: tuple[int, ...], num_classes: int, dropout: float = 0.3):
        super().__init__()
        layers, cin = [], width
        for h in hidden:
            layers += [nn.Linear(cin, h), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            cin = h
        self.hidden = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)
        self.num_features = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.hidden(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)))


class _Net(nn.Module):
    def __init__(self, features: nn.Module, width: int, hidden: tuple[int, ...], num_classes: int,
                 stem: nn.Module | None = None):
        super().__init__()
        self.stem = stem or nn.Identity()
        self.features = features
        self.head = _Classifier(width, hidden, num_classes)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.stem(x)))

    def get_classifier(self) -> nn.Module:
        return self.head.fc


class Grayscale(nn.Module):
    """RGB -> luminance (ITU-R 601 weights), inside the network so the pipeline stays RGB."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (x * w).sum(1, keepdim=True)


class HaarDWT(nn.Module):
    """One-level 2-D Haar wavelet transform: each channel -> LL, LH, HL, HH sub-bands at half size."""

    def __init__(self, channels: int = 3):
        super().__init__()
        ll = torch.tensor([[1.0, 1.0], [1.0, 1.0]]) / 2
        lh = torch.tensor([[1.0, 1.0], [-1.0, -1.0]]) / 2
        hl = torch.tensor([[1.0, -1.0], [1.0, -1.0]]) / 2
        hh = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]) / 2
        bank = torch.stack([ll, lh, hl, hh]).unsqueeze(1)  # (4, 1, 2, 2)
        self.register_buffer("bank", bank.repeat(channels, 1, 1, 1))
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.bank, stride=2, groups=self.channels)


class ElSeoudCNN5(_Net):
    """Abou El-Seoud 2020: five learned layers (3 conv + 2 FC) on grayscale input, 4 WBC types.
    Reading: 3x3 convs of 16/32/64 channels with max-pooling, FC 128 then the class layer."""

    def __init__(self, num_classes: int = 4, in_chans: int = 3):
        features = nn.Sequential(_conv(1, 16), nn.MaxPool2d(2), _conv(16, 32), nn.MaxPool2d(2), _conv(32, 64))
        super().__init__(features, 64, (128,), num_classes, stem=Grayscale() if in_chans == 3 else nn.Identity())


class KalaiselviCNN6(_Net):
    """Kalaiselvi: six learned layers (4 conv + 2 FC) on colour-normalized input (normalization is
    the recipe's preprocessing: Reinhard). Reading: 32/32/64/64 channels, pooling after each pair."""

    def __init__(self, num_classes: int = 2, in_chans: int = 3):
        features = nn.Sequential(_conv(in_chans, 32), _conv(32, 32), nn.MaxPool2d(2), _conv(32, 64), _conv(64, 64),
                                 nn.MaxPool2d(2))
        super().__init__(features, 64, (128,), num_classes)


class VGG16Narrow(_Net):
    """LeukNet (Vogado 2021) is VGG-16 fine-tuned. The VGG-16 topology (13 conv in 5 blocks, 2 hidden
    FC) kept, at a quarter of the width (16..128 channels): full VGG-16 trains at ~6 images/s on this CPU."""

    def __init__(self, num_classes: int = 2, in_chans: int = 3):
        cfg = [16, 16, "M", 32, 32, "M", 64, 64, 64, "M", 128, 128, 128, "M", 128, 128, 128]
        layers, cin = [], in_chans
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers.append(_conv(cin, v))
                cin = v
        super().__init__(nn.Sequential(*layers), 128, (256, 256), num_classes)


class AlexNetSmall(_Net):
    """AlexNet's topology (5 conv, 2 hidden FC, large first kernel) sized for 32-128 px inputs."""

    def __init__(self, num_classes: int = 2, in_chans: int = 3, first_kernel: int = 7, first_stride: int = 2):
        features = nn.Sequential(
            _conv(in_chans, 48, first_kernel, first_stride, bn=False), nn.MaxPool2d(2),
            _conv(48, 96, 5, bn=False), nn.MaxPool2d(2),
            _conv(96, 128, bn=False), _conv(128, 128, bn=False), _conv(128, 96, bn=False))
        super().__init__(features, 96, (256, 256), num_classes)


class WaveletAlexNet(_Net):
    """Naz 2023: AlexNet on discrete-wavelet sub-bands. Reading: a fixed one-level Haar DWT turns
    each RGB image into 12 half-size sub-band channels (LL, LH, HL, HH per colour) feeding AlexNet."""

    def __init__(self, num_classes: int = 2, in_chans: int = 3):
        body = AlexNetSmall(num_classes, in_chans=4 * in_chans, first_kernel=5, first_stride=1)
        super().__init__(body.features, 96, (256, 256), num_classes, stem=HaarDWT(in_chans))


class MuhamadCNN(_Net):
    """Muhamad 2022's custom CNN. Reading: three conv-pool blocks (32/64/128) and one hidden FC."""

    def __init__(self, num_classes: int = 2, in_chans: int = 3):
        features = nn.Sequential(_conv(in_chans, 32), nn.MaxPool2d(2), _conv(32, 64), nn.MaxPool2d(2),
                                 _conv(64, 128), nn.MaxPool2d(2))
        super().__init__(features, 128, (128,), num_classes)


class ChannelSpatialAttention(nn.Module):
    """Squeeze-excitation channel attention followed by a 7x7 spatial attention map (CBAM-style)."""

    def __init__(self, channels: int, reduction: int = 8):
        super().__init__()
        self.channel = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, max(4, channels // reduction), 1),
                                     nn.ReLU(inplace=True), nn.Conv2d(max(4, channels // reduction), channels, 1),
                                     nn.Sigmoid())
        self.spatial = nn.Sequential(nn.Conv2d(2, 1, 7, padding=3), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.channel(x)
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        return x * self.spatial(pooled)


class HierarchicalAttentionCNN(nn.Module):
    """Sakthiraj 2022 (HCNN-IASO): a hierarchical CNN with attention. Reading: three conv stages,
    each followed by channel+spatial attention; the pooled outputs of all stages are concatenated
    (the hierarchy) before the classifier. IASO, the paper's metaheuristic hyper-parameter search,
    is not reproduced: the shared one-cycle recipe trains it like every other network."""

    def __init__(self, num_classes: int = 2, in_chans: int = 3, widths: tuple[int, ...] = (32, 64, 128)):
        super().__init__()
        stages, cin = [], in_chans
        for w in widths:
            stages.append(nn.Sequential(_conv(cin, w), _conv(w, w), ChannelSpatialAttention(w), nn.MaxPool2d(2)))
            cin = w
        self.stages = nn.ModuleList(stages)
        self.head = _Classifier(sum(widths), (128,), num_classes)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = []
        for stage in self.stages:
            x = stage(x)
            pooled.append(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
        return self.head.fc(self.head.hidden(torch.cat(pooled, 1)))

    def get_classifier(self) -> nn.Module:
        return self.head.fc


def _factory(cls, name: str):
    def build(pretrained: bool = False, **kwargs) -> nn.Module:
        _no_pretrained(name, pretrained)
        kwargs = _clean(kwargs)
        return cls(num_classes=kwargs.pop("num_classes", 2), in_chans=kwargs.pop("in_chans", 3), **kwargs)

    build.__name__ = name
    build.__qualname__ = name
    build.__module__ = __name__
    build.__doc__ = cls.__doc__
    return register_model(build)


elseoud_cnn5 = _factory(ElSeoudCNN5, "elseoud_cnn5")
kalaiselvi_cnn6 = _factory(KalaiselviCNN6, "kalaiselvi_cnn6")
vgg16_narrow = _factory(VGG16Narrow, "vgg16_narrow")
alexnet_small = _factory(AlexNetSmall, "alexnet_small")
wavelet_alexnet = _factory(WaveletAlexNet, "wavelet_alexnet")
muhamad_cnn = _factory(MuhamadCNN, "muhamad_cnn")
hcnn_attention = _factory(HierarchicalAttentionCNN, "hcnn_attention")

CUSTOM_ARCHITECTURES = ("elseoud_cnn5", "kalaiselvi_cnn6", "vgg16_narrow", "alexnet_small", "wavelet_alexnet",
                        "muhamad_cnn", "hcnn_attention")


class ShuffleNetV2(nn.Module):
    """torchvision's ShuffleNet-v2 (x0.5), trained from scratch: timm has no ShuffleNet."""

    def __init__(self, num_classes: int = 2, in_chans: int = 3):
        super().__init__()
        from torchvision.models import shufflenet_v2_x0_5

        if in_chans != 3:
            raise InvalidInputError("shufflenet_v2_x0_5 takes 3-channel input")
        self.net = shufflenet_v2_x0_5(weights=None, num_classes=num_classes)
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def get_classifier(self) -> nn.Module:
        return self.net.fc


shufflenet_v2_x0_5 = _factory(ShuffleNetV2, "shufflenet_v2_x0_5")
CUSTOM_ARCHITECTURES = CUSTOM_ARCHITECTURES + ("shufflenet_v2_x0_5",)


@register_model
def regnetx_002_gn(pretrained: bool = False, **kwargs) -> nn.Module:
    """timm's RegNetX-200MF with every batch norm replaced by GroupNorm (8 channels per group).

    Batch-norm running statistics are a main reason cell classifiers fail on another scanner
    (Tsutsui et al. 2023); GroupNorm normalizes each image on its own, so nothing learned from
    the training sites' batch statistics is carried to a new one. Same widths and depth as
    ``regnetx_002`` (every width divides by 8), so the two differ only in the normalization.
    """
    from functools import partial

    import timm
    from timm.layers import GroupNormAct

    _no_pretrained("regnetx_002_gn", pretrained)
    return timm.create_model("regnetx_002", pretrained=False, norm_layer=partial(GroupNormAct, group_size=8),
                             **_clean(kwargs))


CUSTOM_ARCHITECTURES = CUSTOM_ARCHITECTURES + ("regnetx_002_gn",)


def _regnetx_002_as(cls: type, kwargs: dict, **modules: nn.Module) -> nn.Module:
    """timm's ``regnetx_002`` (its weights' names unchanged) as ``cls``, a RegNet subclass whose forward uses
    ``modules`` (weightless additions)."""
    import timm

    net = timm.create_model("regnetx_002", pretrained=False, **_clean(kwargs))
    net.__class__ = cls
    for name, module in modules.items():
        net.add_module(name, module)
    return net


class MixStyle(nn.Module):
    """Mix the feature style (per-channel mean and standard deviation) of each training image with
    another image's in the batch (Zhou et al. 2021, ICLR, "Domain generalization with MixStyle").

    With probability ``p`` per batch, each image's maps are re-standardized to a convex mix of its own
    and a randomly paired image's statistics, the weight drawn from Beta(``alpha``, ``alpha``); a batch
    that mixes sites thus trains the network on styles between the training labs'. The identity in eval
    mode, so inference and the ONNX export carry nothing of it."""

    def __init__(self, p: float = 0.5, alpha: float = 0.1, eps: float = 1e-6):
        super().__init__()
        self.p, self.alpha, self.eps = p, alpha, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.shape[0] < 2 or float(torch.rand(())) > self.p:
            return x
        mu = x.mean(dim=(2, 3), keepdim=True)
        sig = (x.var(dim=(2, 3), keepdim=True) + self.eps).sqrt()
        mu, sig = mu.detach(), sig.detach()
        normed = (x - mu) / sig
        lam = torch.distributions.Beta(self.alpha, self.alpha).sample((x.shape[0], 1, 1, 1)).to(x)
        perm = torch.randperm(x.shape[0])
        return normed * (lam * sig + (1 - lam) * sig[perm]) + lam * mu + (1 - lam) * mu[perm]


class _MixStyleRegNet(RegNet):
    """timm's RegNet with ``MixStyle`` after its first three stages (``mix1`` to ``mix3``)."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mix1(self.s1(self.stem(x)))
        x = self.mix3(self.s3(self.mix2(self.s2(x))))
        return self.final_conv(self.s4(x))


@register_model
def regnetx_002_mixstyle(pretrained: bool = False, **kwargs) -> nn.Module:
    """timm's RegNetX-200MF with MixStyle (``MixStyle``, p 0.5, alpha 0.1) after its first three stages, the
    paper's placement for classification. The same weights as ``regnetx_002`` (MixStyle has none), and the same
    network at inference; only training differs."""
    _no_pretrained("regnetx_002_mixstyle", pretrained)
    return _regnetx_002_as(_MixStyleRegNet, kwargs, mix1=MixStyle(), mix2=MixStyle(), mix3=MixStyle())


CUSTOM_ARCHITECTURES = CUSTOM_ARCHITECTURES + ("regnetx_002_mixstyle",)


class _GreyRegNet(RegNet):
    """timm's RegNet on the luminance of its RGB input (``Grayscale`` before the stem)."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward_features(self.grey(x))


@register_model
def regnetx_002_grey(pretrained: bool = False, **kwargs) -> nn.Module:
    """timm's RegNetX-200MF that sees only the luminance of its (RGB) input: a lab's stain colours cannot
    reach it, only its stain densities, at the price of the colour of granules (an eosinophil's orange)."""
    _no_pretrained("regnetx_002_grey", pretrained)
    return _regnetx_002_as(_GreyRegNet, {**kwargs, "in_chans": 1}, grey=Grayscale())


CUSTOM_ARCHITECTURES = CUSTOM_ARCHITECTURES + ("regnetx_002_grey",)
