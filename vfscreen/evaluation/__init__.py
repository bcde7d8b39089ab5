"""Evaluation: vertebra- and patient-level fracture metrics (the paper's Table I), identification rate and Dice, patient
bootstrap intervals, and the fusion of grader probabilities with the morphometric Genant ratio.

    from vfscreen.evaluation.evaluate import evaluate_predictions, evaluate_cross_validation
"""
