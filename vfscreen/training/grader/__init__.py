"""The grader of Wei et al. 2022: SE-ResNet + SupCon + detached linear head, trained per fold."""
