"""Scoring generated digits, in the role CLIP score and FID play for text-to-image (issue 10).

A small MLP classifier is trained on real images the diffusion model never saw (the first part
of the digits task's held-out ``test`` split) and checked on the rest of that split. A
generated image for prompt "a handwritten seven" is then scored by

- **class accuracy**: whether the classifier's argmax is 7 (CLIP score's "does the picture show
  what the text asked for"), and the **mean probability** it gives the requested class;
- **Fréchet distance** (FID's formula) between Gaussians fitted to the classifier's penultimate
  features of the generated images and of real held-out images (the classifier's own test part,
  unseen by both models). Its value at a finite sample size is biased upward; :attr:`floor`
  reports the distance of another real sample of the same size to the same reference, the value
  a perfect generator would get.

Everything is deterministic given the seed: the classifier's initialisation and mini-batch order
come from explicit ``torch.Generator`` objects, and training runs in float32 on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from maskdiff.data.digits import N_PIXELS, examples_to_arrays
from maskdiff.data.examples import Example
from maskdiff.core.seeding import STREAM_CLASSIFIER, generator_for

N_CLASSES = 10


@dataclass(frozen=True, kw_only=True)
class ClassifierConfig:
    """The evaluator's MLP: 64 inputs → ``hidden`` ReLU layers (the last: the features) → 10.

    ``train_fraction`` of the held-out images train it, the rest test it and are the real
    reference of the Fréchet distance.
    """

    hidden: tuple[int, ...] = (128, 64)
    epochs: int = 60
    batch_size: int = 32
    lr: float = 3e-3
    weight_decay: float = 1e-3
    seed: int = 0
    train_fraction: float = 0.6

    def __post_init__(self) -> None:
        if not self.hidden or any(isinstance(h, bool) or not isinstance(h, int) or h < 1
                                  for h in self.hidden):
            raise ValueError(
                f"hidden must be a non-empty tuple of positive ints, got {self.hidden!r}")
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0.0 < self.train_fraction < 1.0:
            raise ValueError(f"train_fraction must lie in (0, 1), got {self.train_fraction!r}")


def images_to_inputs(images: np.ndarray, levels: int) -> torch.Tensor:
    """(N, 8, 8) grey levels to (N, 64) float32 in [0, 1]."""
    values = np.asarray(images)
    if values.ndim < 2 or values[0].size != N_PIXELS:
        raise ValueError(f"images must have shape (N, 8, 8) or (N, 64), got {values.shape}")
    return torch.tensor(values.reshape(len(values), N_PIXELS) / (levels - 1), dtype=torch.float32)


class DigitClassifier(nn.Module):
    """An MLP whose last hidden layer is the feature space of the Fréchet distance."""

    def __init__(self, hidden: Sequence[int], generator: torch.Generator) -> None:
        super().__init__()
        widths = [N_PIXELS, *hidden]
        self.body = nn.Sequential(*[layer for a, b in zip(widths[:-1], widths[1:])
                                    for layer in (nn.Linear(a, b), nn.ReLU())])
        self.head = nn.Linear(widths[-1], N_CLASSES)
        for module in (*self.body, self.head):  # seeded init (PyTorch's default law, our RNG)
            if isinstance(module, nn.Linear):
                bound = 1.0 / module.in_features ** 0.5
                with torch.no_grad():
                    module.weight.uniform_(-bound, bound, generator=generator)
                    module.bias.uniform_(-bound, bound, generator=generator)

    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.body(inputs)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(inputs))


def train_classifier(images: np.ndarray, labels: np.ndarray, levels: int,
                     config: ClassifierConfig = ClassifierConfig()) -> DigitClassifier:
    """Mini-batch AdamW with cross-entropy; init and batch order seeded by ``config.seed``."""
    inputs = images_to_inputs(images, levels)
    targets = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if len(inputs) != len(targets) or len(inputs) == 0:
        raise ValueError(
            f"need as many labels as images (> 0), got {len(inputs)} and {len(targets)}")
    model = DigitClassifier(config.hidden, generator_for(config.seed, STREAM_CLASSIFIER, 0))
    order_gen = generator_for(config.seed, STREAM_CLASSIFIER, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    model.train()
    for _ in range(config.epochs):
        order = torch.randperm(len(inputs), generator=order_gen)
        for start in range(0, len(inputs), config.batch_size):
            idx = order[start:start + config.batch_size]
            loss = nn.functional.cross_entropy(model(inputs[idx]), targets[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return model.eval()


@torch.no_grad()
def predict_proba(classifier: DigitClassifier, images: np.ndarray, levels: int) -> np.ndarray:
    return classifier(images_to_inputs(images, levels)).softmax(-1).double().numpy()


@torch.no_grad()
def image_features(classifier: DigitClassifier, images: np.ndarray, levels: int) -> np.ndarray:
    """The classifier's penultimate activations, (N, hidden[-1]) float64."""
    return classifier.features(images_to_inputs(images, levels)).double().numpy()


@dataclass(frozen=True)
class ClassScores:
    """Class accuracy and mean probability of the requested class, overall and per class."""

    accuracy: float
    mean_prob: float
    n: int
    per_class_accuracy: list[float]
    per_class_prob: list[float]

    def to_dict(self) -> dict:
        return asdict(self)


def class_scores(classifier: DigitClassifier, images: np.ndarray, labels: np.ndarray,
                 levels: int) -> ClassScores:
    """How often the classifier sees the requested class, and its probability for it."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0 or len(labels) != len(images):
        raise ValueError(
            f"need as many labels as images (> 0), got {len(labels)} and {len(images)}")
    probs = predict_proba(classifier, images, levels)
    hit = probs.argmax(1) == labels
    p_requested = probs[np.arange(len(labels)), labels]
    per_acc = [float(hit[labels == c].mean()) if np.any(labels == c) else float("nan")
               for c in range(N_CLASSES)]
    per_prob = [float(p_requested[labels == c].mean()) if np.any(labels == c) else float("nan")
                for c in range(N_CLASSES)]
    return ClassScores(accuracy=float(hit.mean()), mean_prob=float(p_requested.mean()),
                       n=int(len(labels)), per_class_accuracy=per_acc, per_class_prob=per_prob)


def _sym_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """``|μa − μb|² + Tr(Σa + Σb − 2 (Σa^½ Σb Σa^½)^½)`` of two feature clouds (FID's formula).

    The trace of the matrix square root of ``Σa Σb`` is computed as that of the symmetric
    ``Σa^½ Σb Σa^½`` (same eigenvalues), by eigendecomposition: real and stable even when the
    covariances are singular (fewer samples than features, dead ReLU units).
    """
    a, b = np.asarray(features_a, dtype=np.float64), np.asarray(features_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"features must be (N, d) arrays with the same d, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"need at least 2 samples on each side, got {len(a)} and {len(b)}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root_a = _sym_sqrt(cov_a)
    cross = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    trace_root = float(np.sum(np.sqrt(np.clip(cross, 0.0, None))))
    value = float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root)
    return max(value, 0.0)  # rounding can leave -1e-12 for identical clouds


@dataclass
class DigitEvaluator:
    """The trained classifier plus the real reference features (see the module docstring).

    Build with :meth:`fit`. ``real_test`` is the classifier's own accuracy on real held-out
    images; ``floor`` the Fréchet distance of ``floor_examples`` (real images the classifier
    never saw, e.g. the diffusion model's validation and training images) to the reference.
    """

    classifier: DigitClassifier
    levels: int
    config: ClassifierConfig
    reference: np.ndarray  # features of the real reference images
    real_test: ClassScores
    n_train: int
    floor: float | None = None

    @classmethod
    def fit(cls, held_out: Sequence[Example], levels: int,
            config: ClassifierConfig = ClassifierConfig(),
            floor_examples: Sequence[Example] | None = None) -> "DigitEvaluator":
        """Train on the first ``train_fraction`` of ``held_out``; test on the rest (the
        Fréchet reference)."""
        images, labels = examples_to_arrays(list(held_out), levels)
        n_train = int(round(config.train_fraction * len(images)))
        if n_train < N_CLASSES or len(images) - n_train < 2:
            raise ValueError(f"held_out has {len(images)} images: too few to train the classifier "
                             f"on {n_train} and test it on the rest")
        classifier = train_classifier(images[:n_train], labels[:n_train], levels, config)
        test_images, test_labels = images[n_train:], labels[n_train:]
        evaluator = cls(classifier=classifier, levels=levels, config=config,
                        reference=image_features(classifier, test_images, levels),
                        real_test=class_scores(classifier, test_images, test_labels, levels),
                        n_train=n_train)
        if floor_examples:
            floor_images, _ = examples_to_arrays(list(floor_examples), levels)
            evaluator.floor = evaluator.frechet(floor_images)
        return evaluator

    @property
    def n_reference(self) -> int:
        return len(self.reference)

    def frechet(self, images: np.ndarray) -> float:
        features = image_features(self.classifier, images, self.levels)
        return frechet_distance(features, self.reference)

    def score(self, images: np.ndarray, labels: np.ndarray) -> dict:
        """``accuracy``, ``mean_prob``, per-class values and ``frechet`` of generated images."""
        scores = class_scores(self.classifier, images, labels, self.levels)
        return {**scores.to_dict(), "frechet": self.frechet(images)}

    def summary(self) -> dict:
        return {"classifier": {**asdict(self.config), "hidden": list(self.config.hidden)},
                "classifier_train_images": self.n_train, "reference_images": self.n_reference,
                "real_test_accuracy": self.real_test.accuracy,
                "real_test_mean_prob": self.real_test.mean_prob,
                "real_frechet_floor": self.floor}
