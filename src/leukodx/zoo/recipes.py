"""The model zoo: the review's methods as named recipes, each a small config citing its paper.

A recipe says what is trained (one network, or backbones + a classic head), with which
preprocessing if the method *is* preprocessing, and the figure the paper claims. The budget
(input size, epochs, images per class, folds) is not part of a recipe: the benchmark gives
every recipe the same one, so the rows of a leaderboard are comparable.

No ImageNet weights can be downloaded here: every recipe trains from scratch unless a local
safetensors file is passed as ``pretrained`` (then the network recipes start from it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import leukodx.models.networks  # noqa: F401  (registers the papers' own networks with timm)
from leukodx.errors import InvalidInputError
from leukodx.preprocessing.augment import augment_preset
from leukodx.preprocessing.transforms import Preprocess
from leukodx.training.trainer import TrainConfig
from leukodx.zoo.estimators import FeatureEstimator, NetworkEstimator


@dataclass(frozen=True)
class Budget:
    """What every recipe gets in one benchmark run."""

    name: str
    size: int
    epochs: int
    per_class: int | None      # cap on training images per class (train+val pool), None = all
    test_per_class: int | None  # cap on test images per class (quick mode only)
    folds: int
    batch_size: int = 64
    patience: int = 4


QUICK = Budget("quick", size=32, epochs=2, per_class=12, test_per_class=8, folds=2, batch_size=16, patience=2)
FULL = Budget("full", size=64, epochs=6, per_class=100, test_per_class=None, folds=5)
BUDGETS = {"quick": QUICK, "full": FULL}


@dataclass(frozen=True)
class Recipe:
    name: str
    paper: str
    method: str
    claimed: str
    claim_context: str            # dataset / protocol of the paper's figure
    arch: str = ""                # network recipes
    backbones: tuple[str, ...] = ()  # feature recipes
    head: str = ""                # feature head kind
    cca_components: int = 0
    stain: str = "none"           # when colour normalization is part of the method
    augment: str = "light"        # the shared augmentation, unless the method is augmentation
    lr: float = 3e-3
    reading: str = ""             # how an unclear detail of the paper was read
    notes: tuple[str, ...] = field(default=())

    @property
    def kind(self) -> str:
        return "features" if self.backbones else "network"

    def train_config(self, budget: Budget, seed: int = 0, augment: str | None = None, stain: str | None = None,
                     pretrained: str | None = None) -> TrainConfig:
        return TrainConfig(arch=self.arch or self.backbones[0], epochs=budget.epochs, batch_size=budget.batch_size,
                           lr=self.lr, patience=budget.patience, seed=seed, pretrained=pretrained,
                           preprocess=Preprocess(size=budget.size, stain=stain or self.stain),
                           augment=augment_preset(augment or self.augment))

    def build(self, budget: Budget, seed: int = 0, augment: str | None = None, stain: str | None = None,
              pretrained: str | None = None, show_progress: bool = False):
        config = self.train_config(budget, seed, augment, stain, pretrained)
        if self.kind == "network":
            return NetworkEstimator(config, show_progress)
        return FeatureEstimator(self.backbones, self.head, config, cca_components=self.cca_components,
                                show_progress=show_progress)


_RECIPES: dict[str, Recipe] = {}
PAPER_DATA = "the paper's own data, split and metric, as cited by the 2023 scoping review"


def register_recipe(recipe: Recipe) -> Recipe:
    if recipe.name in _RECIPES:
        raise ValueError(f"recipe {recipe.name!r} registered twice")
    _RECIPES[recipe.name] = recipe
    return recipe


def list_recipes() -> list[str]:
    return list(_RECIPES)


def get_recipe(name: str) -> Recipe:
    if name not in _RECIPES:
        raise InvalidInputError(f"recipe {name!r}: not in the zoo ({', '.join(_RECIPES)})")
    return _RECIPES[name]


for _recipe in (
    Recipe("vogado2018-svm", "Vogado et al. 2018", "features of several CNNs, gain-ratio selection, SVM",
           ">99%", PAPER_DATA,
           backbones=("alexnet_small", "vgg16_narrow", "resnet18"), head="gain-ratio-svm",
           reading="the paper's AlexNet, CaffeNet and VGG-f were ImageNet-trained feature extractors; here the three "
                   "backbones (AlexNet, narrow VGG-16, ResNet-18) are trained on the training fold first, their "
                   "penultimate features concatenated, the top 200 by gain ratio kept, then a linear SVM"),
    Recipe("leuknet", "Vogado et al. 2021 (LeukNet)", "VGG-16-based CNN, fine-tuned", "98.61% (cross-dataset)",
           PAPER_DATA, arch="vgg16_narrow",
           reading="VGG-16 topology at a quarter of the width (full VGG-16 trains at ~6 images/s on this CPU); "
                   "no ImageNet fine-tuning is possible, so it trains from scratch"),
    Recipe("elseoud2020-cnn5", "Abou El-Seoud et al. 2020",
           "five-layer CNN on grayscale input, 4 WBC types", "96.78%", PAPER_DATA,
           arch="elseoud_cnn5", reading="3 conv + 2 FC; grayscale conversion is the network's first operation"),
    Recipe("kalaiselvi-cnn6", "Kalaiselvi et al.",
           "six-layer CNN after colour normalization", "98%", PAPER_DATA, arch="kalaiselvi_cnn6", stain="reinhard",
           reading="4 conv + 2 FC; the paper's colour normalization read as Reinhard (Lab statistics)"),
    Recipe("huang2020-transfer", "Huang et al. 2020", "ResNet transfer learning",
           "97%", PAPER_DATA, arch="resnet18",
           reading="of GoogLeNet / ResNet / DenseNet the ResNet (ResNet-18) is the row; DenseNet appears in the "
                   "Claro and Houssein recipes; without ImageNet weights 'transfer' becomes training from scratch"),
    Recipe("claro2022-densenet121", "Claro et al. 2022", "DenseNet-121 with data augmentation", "97.11%",
           PAPER_DATA, arch="densenet121", augment="all",
           reading="augmentation is the method here: the full preset (flip, rotation, translation, scale, colour)"),
    Recipe("muhamad2022-mobilenetv2", "Muhamad et al. 2022", "MobileNet-v2", "97.2%", PAPER_DATA, arch="mobilenetv2_100"),
    Recipe("muhamad2022-alexnet", "Muhamad et al. 2022", "AlexNet", "81.5%", PAPER_DATA, arch="alexnet_small",
           reading="AlexNet's topology sized for small inputs"),
    Recipe("muhamad2022-cnn", "Muhamad et al. 2022", "custom CNN", "95.2%", PAPER_DATA, arch="muhamad_cnn",
           reading="three conv-pool blocks and one hidden FC layer"),
    Recipe("baig2022-cca-bagging", "Baig et al. 2022", "two CNNs, CCA fusion, bagging", "97.04%",
           PAPER_DATA, backbones=("alexnet_small", "muhamad_cnn"), head="bagging", cca_components=32,
           reading="two CNNs trained here; 32 canonical variate pairs concatenated; bagged decision trees"),
    Recipe("saleem2022-features", "Saleem et al. 2022", "DarkNet / ShuffleNet features, SVM / subspace KNN / naive Bayes",
           "99.7%", PAPER_DATA, backbones=("cs3darknet_s", "shufflenet_v2_x0_5"), head="svm-knn-nb",
           reading="DarkNet-53 read as timm's small cross-stage DarkNet (cs3darknet_s) for the CPU budget; the head "
                   "among SVM, subspace KNN and naive Bayes is chosen on validation macro-F1"),
    Recipe("houssein2023-densenet161", "Houssein et al. 2023",
           "DenseNet-161, one-cycle LR", "99.80%", PAPER_DATA, arch="densenet161",
           reading="one-cycle is the project trainer's schedule for every recipe, so the method is the network"),
    Recipe("naz2023-wavelet", "Naz et al. 2023", "AlexNet on DWT "
           "sub-bands", "96.9%", PAPER_DATA, arch="wavelet_alexnet",
           reading="one-level Haar DWT (LL, LH, HL, HH per colour channel) as a fixed first layer"),
    Recipe("sakthiraj2022-attention", "Sakthiraj 2022 (HCNN-IASO)", "hierarchical CNN with "
           "attention", "99.87%", PAPER_DATA, arch="hcnn_attention",
           reading="three attention stages whose pooled outputs are concatenated; IASO hyper-parameter search not "
                   "reproduced"),
):
    register_recipe(_recipe)
