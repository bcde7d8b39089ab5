"""Reading a trained grader out: the head's raw logits, or a linear probe on frozen features (Khosla et al. 2020).

The head readout is the paper's: grades = argmax of the classification head's logits, no prior correction.
The probe readout is Khosla et al.'s final stage: freeze the network, take eval-mode features of the training crops
(centred, plus a few augmented copies), fit a class-balanced multinomial logistic regression (scikit-learn) and store
it as the linear classification head, so prediction reads it like any head. A probe whose fit does not converge is
not used: the head stays (``ProbeFit.converged`` False, with the reason).

Representation diagnostics: mean cosine similarity within and across grades of L2-normalised features.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression


@dataclass
class ProbeFit:
    weight: np.ndarray  # (num_classes, num_features), acting on raw features
    bias: np.ndarray  # (num_classes,)
    converged: bool
    message: str

    def logits(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(features, dtype=np.float64) @ self.weight.T + self.bias


def fit_linear_probe(features: np.ndarray, grades: np.ndarray, num_classes: int = 4, max_iter: int = 2000,
                     inverse_regularisation: float = 1.0, seed: int = 0) -> ProbeFit:
    """Class-balanced logistic regression on standardised features, folded back to weights on the raw features.

    features (N, F), grades (N,) in 0..num_classes-1 (every class present). Not converged within ``max_iter``
    iterations (scikit-learn's ConvergenceWarning) -> ``converged`` False.
    """
    features = np.asarray(features, dtype=np.float64)
    grades = np.asarray(grades, dtype=int)
    present = np.unique(grades)
    if len(present) != num_classes:
        return ProbeFit(np.zeros((num_classes, features.shape[1])), np.zeros(num_classes), False,
                        f"probe needs every grade in its training features, got {present.tolist()}")
    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    scale[scale < 1e-8] = 1.0  # a constant feature carries nothing; keep it finite
    standardised = (features - mean) / scale
    model = LogisticRegression(C=inverse_regularisation, class_weight="balanced", max_iter=max_iter,
                               random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        try:
            model.fit(standardised, grades)
        except ConvergenceWarning:
            return ProbeFit(np.zeros((num_classes, features.shape[1])), np.zeros(num_classes), False,
                            f"logistic regression did not converge in {max_iter} iterations")
    weight = model.coef_ / scale  # (C, F)
    bias = model.intercept_ - weight @ mean
    return ProbeFit(weight, bias, True, f"converged in {int(np.max(model.n_iter_))} iterations")


def install_probe(network, probe: ProbeFit) -> None:
    """Copy the probe into the network's classification head (a torch.nn.Linear)."""
    head = network.classification_head
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(probe.weight, dtype=head.weight.dtype))
        head.bias.copy_(torch.as_tensor(probe.bias, dtype=head.bias.dtype))


def softmax(logits: np.ndarray) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def cosine_within_across(features: np.ndarray, grades: np.ndarray) -> dict:
    """Mean cosine similarity of L2-normalised features over pairs of different vertebrae of the same grade
    (within) and of different grades (across); None where no such pair exists."""
    features = np.asarray(features, dtype=np.float64)
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    similarity = unit @ unit.T
    grades = np.asarray(grades)
    same = grades[:, None] == grades[None, :]
    off_diagonal = ~np.eye(len(grades), dtype=bool)
    within, across = similarity[same & off_diagonal], similarity[~same]
    return {"within": float(within.mean()) if within.size else None,
            "across": float(across.mean()) if across.size else None}


@torch.no_grad()
def extract(network, loader, device, memory_format=torch.contiguous_format) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode (features (N, F), head logits (N, C)) of every batch of ``loader`` (items (patches, index)),
    in the loader's order."""
    network.eval()
    features, logits = [], []
    for patches, _ in loader:
        patches = patches.to(device).contiguous(memory_format=memory_format)
        batch_features, batch_logits, _ = network(patches)
        features.append(batch_features.float().cpu().numpy())
        logits.append(batch_logits.float().cpu().numpy())
    return np.concatenate(features), np.concatenate(logits)
