"""The exact chain model that names vertebra components ordered along the spine (Viterbi + forward-backward).

Each component (head -> feet) is either dropped or given a vertebra class 1..K; kept classes increase strictly from
head to feet; a skipped (missing) vertebra costs ``log(skip_probability)``, a dropped component
``log(drop_probability)``, a T13 or L6 ``log(variant_probability)`` (T13 may be absent at no cost). The evidence per
component is the network's class probabilities plus, optionally, landmark factors
(:mod:`vfscreen.inference.landmarks`) and the gaps between neighbouring components: consecutive kept components
``d`` mm apart, where vertebrae lie ``p`` mm apart locally, are ``s`` skipped vertebrae apart with likelihood
N(d / p; s + 1, (GAP_SD_PITCHES * sqrt(s + 1))^2) - a missed vertebra leaves a gap of two pitches, so the names on
the far side of a miss do not shift by one. ``p`` is the median gap of the neighbouring pairs (vertebral pitch grows
gradually from the neck to the sacrum); a gap is only evidence between two components that are both kept.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp

from vfscreen.labels import NUM_VERTEBRA_CLASSES, VERSE_TO_CLASS

LEVEL_CERTAIN_POSTERIOR = 0.9  # a name with a lower posterior is flagged level_uncertain
OPTIONAL_CLASSES = frozenset({VERSE_TO_CLASS[28]})  # T13: its absence is normal anatomy
VARIANT_CLASSES = frozenset({VERSE_TO_CLASS[28], VERSE_TO_CLASS[25]})  # T13 and L6: present in a minority
PROBABILITY_FLOOR = 1e-6
GAP_SD_PITCHES = 0.3  # spread of one pitch (centroid jitter of partial / split / merged components; modelling choice)
GAP_WINDOW = 2  # the local pitch: median of the gaps up to this many pairs on either side
MIN_GAPS_FOR_PITCH = 3  # fewer consecutive pairs: no gap evidence (the pitch is unknown)
_IMPOSSIBLE = -np.inf


@dataclass
class ChainModel:
    """Priors of the chain model (probabilities; used as log-potentials)."""

    drop_probability: float = 1e-2  # a component that fits nowhere (false positive, fragment) is dropped
    skip_probability: float = 5e-2  # per vertebra missing between two kept components
    variant_probability: float = 5e-2  # prior of labelling a component T13 or L6
    use_gaps: bool = True  # gaps between neighbouring components as evidence of skipped vertebrae
    probability_floor: float = PROBABILITY_FLOOR


def _skipped_mandatory(previous_class: np.ndarray, next_class: np.ndarray) -> np.ndarray:
    """Number of non-optional classes strictly between two class ids (broadcasting arrays)."""
    skipped = next_class - previous_class - 1
    for optional in OPTIONAL_CLASSES:
        skipped = skipped - ((previous_class < optional) & (optional < next_class))
    return skipped


def _transition_log_matrix(num_classes: int, model: ChainModel) -> np.ndarray:
    """(S, S) log transition potentials between states; state = 2 * last_kept_class + kept (last_kept_class 0 = none).

    kept=1: this component holds ``last_kept_class``; kept=0: this component is dropped, the last class carries on.
    """
    num_states = 2 * (num_classes + 1)
    transition = np.full((num_states, num_states), _IMPOSSIBLE)
    classes = np.arange(num_classes + 1)
    previous, following = np.meshgrid(classes, classes, indexing="ij")
    skipped = _skipped_mandatory(previous, following)
    keep_potential = np.where(following > previous, np.maximum(skipped, 0) * np.log(model.skip_probability),
                              _IMPOSSIBLE)
    keep_potential[0, :] = np.where(classes > 0, 0.0, _IMPOSSIBLE)  # the field of view may start at any vertebra
    for previous_kept in (0, 1):
        rows = 2 * classes + previous_kept
        transition[np.ix_(rows, 2 * classes + 1)] = keep_potential
        transition[rows, 2 * classes] = 0.0  # drop: last kept class unchanged
    transition[:, 1] = _IMPOSSIBLE  # state (class 0, kept) does not exist
    return transition


def _emission_log_table(class_probabilities: np.ndarray, model: ChainModel) -> np.ndarray:
    """(N, S) log evidence of each state for each component."""
    num_components, num_classes = class_probabilities.shape
    emission = np.full((num_components, 2 * (num_classes + 1)), np.log(model.drop_probability))
    emission[:, 1] = _IMPOSSIBLE
    # a class probability p_k of K classes is a likelihood ratio K * p_k against "no idea" (1 / K): keeping is weighed
    # against dropping independently of how the evidence spreads over classes (a region network spreads it over 13)
    emission[:, 3::2] = np.log(np.maximum(class_probabilities, model.probability_floor) * num_classes)
    for class_id in VARIANT_CLASSES:
        if class_id <= num_classes:
            emission[:, 2 * class_id + 1] += np.log(model.variant_probability)
    return emission


def assign_labels(class_probabilities: np.ndarray, model: ChainModel | None = None,
                  landmark_factors: np.ndarray | None = None, centroids_mm: np.ndarray | None = None,
                  scale_factors: tuple[np.ndarray, np.ndarray] | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact MAP labelling of components ordered head -> feet.

    class_probabilities: (N, K) probability of classes 1..K per component, rows in cranio-caudal order.
    landmark_factors: (N, K) log-likelihood of each component's landmark observations given each class
    (vfscreen.inference.landmarks.landmark_log_factors), or None.
    centroids_mm: (N, 3) component centroids (world), for the gap evidence; None = no gap evidence.
    scale_factors: (log prior (A,), factors (A, N, K)): evidence that depends on one hidden value shared by the whole
    chain, on a grid of A values (the patient's size: vfscreen.core.vertebra_sizes.SizeModel.log_factors); the chain
    is solved for each value, the MAP is the best (value, labelling) and the marginals are mixed by each value's
    posterior - exact over the grid. None = no such evidence.
    Returns (new_class (N,) int, 0 = dropped; confidence (N,) posterior of the chosen state;
    marginals (N, K + 1) posterior of [dropped, class 1, ..., class K]).
    """
    model = model or ChainModel()
    class_probabilities = np.asarray(class_probabilities, dtype=float)
    num_components, num_classes = class_probabilities.shape if class_probabilities.ndim == 2 else (0, 0)
    if num_components == 0:
        return np.zeros(0, int), np.zeros(0), np.zeros((0, NUM_VERTEBRA_CLASSES + 1))
    base_transition = _transition_log_matrix(num_classes, model)
    gaps = gap_log_likelihoods(centroids_mm, num_classes) if centroids_mm is not None and model.use_gaps else None

    def transition(position):  # from component position - 1 to component position
        if gaps is None:
            return base_transition
        return base_transition + gaps[position - 1]

    emission = _emission_log_table(class_probabilities, model)
    if landmark_factors is not None:
        emission[:, 3::2] += np.asarray(landmark_factors, dtype=float)[:, :num_classes]
    if scale_factors is None:
        states, _, state_posterior, _ = _solve_chain(emission, base_transition[0], transition)
    else:
        log_prior, factors = scale_factors
        solutions = []
        for value_prior, value_factors in zip(np.asarray(log_prior, dtype=float), np.asarray(factors, dtype=float)):
            value_emission = emission.copy()
            value_emission[:, 3::2] += value_factors[:, :num_classes]
            solutions.append((value_prior, *_solve_chain(value_emission, base_transition[0], transition)))
        best = max(solutions, key=lambda solution: solution[0] + solution[2])  # prior + Viterbi score
        states = best[1]
        weights = np.array([solution[0] + solution[4] for solution in solutions])  # prior + log evidence
        weights = np.exp(weights - logsumexp(weights))
        state_posterior = sum(weight * solution[3] for weight, solution in zip(weights, solutions))

    new_class = np.where(states % 2 == 1, states // 2, 0)
    confidence = state_posterior[np.arange(num_components), states]
    confidence = np.where(new_class > 0, confidence, state_posterior[:, 0::2].sum(axis=1))
    marginals = np.concatenate([state_posterior[:, 0::2].sum(axis=1, keepdims=True), state_posterior[:, 3::2]], axis=1)
    return new_class, np.clip(confidence, 0.0, 1.0), marginals


def _solve_chain(emission: np.ndarray, start: np.ndarray, transition) -> tuple[np.ndarray, float, np.ndarray, float]:
    """Viterbi and forward-backward over emission (N, S) with ``transition(position)`` (S, S) and the start row (S,).
    Returns (MAP states (N,), MAP log score, state posteriors (N, S), log evidence)."""
    num_components, num_states = emission.shape
    score = start + emission[0]
    backpointers = np.zeros((num_components, num_states), dtype=int)
    for position in range(1, num_components):
        candidates = score[:, None] + transition(position)
        backpointers[position] = np.argmax(candidates, axis=0)
        score = candidates[backpointers[position], np.arange(num_states)] + emission[position]
    states = np.zeros(num_components, dtype=int)
    states[-1] = int(np.argmax(score))
    for position in range(num_components - 1, 0, -1):
        states[position - 1] = backpointers[position, states[position]]

    forward = np.zeros_like(emission)
    forward[0] = start + emission[0]
    for position in range(1, num_components):
        forward[position] = logsumexp(forward[position - 1][:, None] + transition(position), axis=0) \
            + emission[position]
    backward = np.zeros_like(emission)
    for position in range(num_components - 2, -1, -1):
        backward[position] = logsumexp(transition(position + 1)
                                       + (emission[position + 1] + backward[position + 1])[None, :], axis=1)
    log_evidence = float(logsumexp(forward[-1]))
    return states, float(score.max()), np.exp(forward + backward - log_evidence), log_evidence


def local_pitches_mm(centroids_mm: np.ndarray) -> np.ndarray | None:
    """(N - 1,) the local vertebral pitch at each consecutive pair (median of nearby gaps), None with too few."""
    gaps = np.linalg.norm(np.diff(np.asarray(centroids_mm, dtype=float), axis=0), axis=1)
    if len(gaps) < MIN_GAPS_FOR_PITCH:
        return None
    return np.array([np.median(gaps[max(0, i - GAP_WINDOW): i + GAP_WINDOW + 1]) for i in range(len(gaps))])


def gap_log_likelihoods(centroids_mm: np.ndarray, num_classes: int) -> np.ndarray | None:
    """(N - 1, S, S) log-likelihood of each consecutive pair's gap under every transition between states (both kept:
    the number of mandatory vertebrae skipped between their classes; otherwise 0), relative to the number of skips
    that fits the gap best; None without a pitch."""
    pitches = local_pitches_mm(centroids_mm)
    if pitches is None:
        return None
    gaps = np.linalg.norm(np.diff(np.asarray(centroids_mm, dtype=float), axis=0), axis=1)
    classes = np.arange(num_classes + 1)
    previous, following = np.meshgrid(classes, classes, indexing="ij")
    steps = np.maximum(_skipped_mandatory(previous, following), 0) + 1.0  # pitches between the two classes
    num_states = 2 * (num_classes + 1)
    result = np.zeros((len(gaps), num_states, num_states))
    kept_rows, kept_columns = 2 * classes + 1, 2 * classes + 1
    for pair, (gap, pitch) in enumerate(zip(gaps, pitches)):
        ratio = gap / max(pitch, 1e-6)
        sd = GAP_SD_PITCHES * np.sqrt(steps)
        log_likelihood = -0.5 * ((ratio - steps) / sd) ** 2 - np.log(sd)
        block = log_likelihood - log_likelihood.max()  # relative to the best-fitting number of skips
        block[0, :] = 0.0  # from "no class yet": no previous kept component
        result[pair][np.ix_(kept_rows, kept_columns)] = block
    return result
