"""Text table laid out like Table I of Wei et al. 2022 (FE, Loss, Optimizer, Dataset | binary AUCROC, SPE, SEN |
multi-class Macro-F1, Macro-Precision, Macro-Recall), every cell with its 95 % patient-bootstrap interval, plus the
patient-level and segmentation/identification lines. ``n/a`` marks an undefined metric (its reason is in the JSON).
"""
from __future__ import annotations

from vfscreen.core.plans import grader_section
from vfscreen.errors import ConfigError
from vfscreen.evaluation.metrics import OWN_OPERATING_POINT

HEADER = ["FE", "Loss", "Optimizer", "Dataset", "Score", "Operating point", "AUCROC", "SPE", "SEN", "Macro-F1",
          "Macro-Precision", "Macro-Recall"]
SCORE_NAMES = {"grader": "grader", "morphometry": "morphometry", "fused": "fused"}
OPERATING_POINT_NAMES = {"argmax": "argmax", "genant_rule": "Genant rule", "probability_0.5": "p >= 0.5",
                         "validation_threshold": "val. threshold"}


def cell(leaf: dict | None, digits: int = 2) -> str:
    """'0.95 [0.91, 0.98]', '0.95' without interval, 'n/a' when undefined, '-' when not applicable."""
    if not leaf:
        return "-"
    if leaf.get("value") is None:
        return "n/a"
    text = f"{leaf['value']:.{digits}f}"
    interval = leaf.get("ci95")
    if interval:
        text += f" [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"
    return text


LOSS_NAMES = {"supcon": "SupCon", "ce": "Cross Entropy"}


def describe_method(plans: dict | None, configuration: str = "3d", loss: str | None = None) -> dict:
    """FE / Loss / Optimizer columns from a grader plan (contract 2); '-' for what is not there. ``loss`` (the
    trained grader's loss) overrides the plan's: a cross-entropy model keeps a copy of the SupCon plan."""
    try:
        grader = grader_section(plans, configuration)
    except (ConfigError, AttributeError):
        return {"FE": "-", "Loss": LOSS_NAMES.get(loss, "-"), "Optimizer": "-"}
    network = grader.get("network", {})
    backbone = "SE-ResNet" if network.get("squeeze_excitation") else "ResNet"
    depth = sum(network.get("n_blocks_per_stage", []) or [])
    loss = LOSS_NAMES.get(loss or str(grader.get("loss", {}).get("name", "")).lower(), "-")
    optimizer = str(grader.get("optimizer", {}).get("name", "-")).upper() if grader.get("optimizer") else "-"
    return {"FE": f"{backbone} ({depth} blocks)" if depth else backbone, "Loss": loss, "Optimizer": optimizer}


def table_rows(result: dict, method: dict | None = None, dataset_label: str = "-", level: str = "vertebra") -> list:
    """Rows (lists of cell strings) of one evaluation result at ``level`` ('vertebra' or 'patient')."""
    method = {"FE": "-", "Loss": "-", "Optimizer": "-", **(method or {})}
    classification = result["metrics"]["classification"][level]
    rows = []
    for score, block in classification.items():
        own = OWN_OPERATING_POINT[score]
        for point in (own, "validation_threshold"):
            four = block.get("four_grades", {}) if point == own else {}
            descriptor = [method["FE"], method["Loss"], method["Optimizer"]] if score == "grader" else \
                ["-", "-", "-"]
            rows.append(descriptor + [dataset_label, SCORE_NAMES[score], OPERATING_POINT_NAMES[point],
                                      cell(block.get("auroc")), cell(block[point].get("specificity")),
                                      cell(block[point].get("sensitivity")), cell(four.get("macro_f1")),
                                      cell(four.get("macro_precision")), cell(four.get("macro_recall"))])
    return rows


def render_markdown(header: list[str], rows: list[list[str]]) -> str:
    """The same rows as a Markdown table (the README tables of every benchmark)."""
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(row) + " |" for row in rows])


def render(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths)), line]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(out)


def format_result(result: dict, method: dict | None = None, dataset_label: str | None = None) -> str:
    """The full printout of one evaluation result."""
    dataset_label = dataset_label or result.get("dataset") or "-"
    classification = result["metrics"]["classification"]["vertebra"]
    parts = [f"Vertebra level (binary: G0 vs G1-G3; multi-class: G0-G3), "
             f"{result['metrics']['classification'].get('num_vertebrae', 0)} graded vertebrae "
             f"({result['metrics']['classification'].get('num_fractured_vertebrae', 0)} fractured), "
             f"{result['metrics']['classification'].get('num_patients', 0)} patients; 95 % bootstrap intervals over "
             f"patients ({result['bootstrap']['n_resamples']} resamples, seed {result['bootstrap']['seed']})",
             render(HEADER, table_rows(result, method, dataset_label, "vertebra")), "",
             f"Patient level (worst vertebra), "
             f"{result['metrics']['classification'].get('num_fractured_patients', 0)} patients with a fracture",
             render(HEADER[:9], [r[:9] for r in table_rows(result, method, dataset_label, "patient")])]
    confusion = classification["grader"].get("four_grades", {}).get("confusion_matrix")
    if confusion:
        parts += ["", "Grader confusion matrix (rows: reference G0-G3, columns: predicted G0-G3)",
                  render(["", "G0", "G1", "G2", "G3"], [[f"G{g}"] + [str(v) for v in row]
                                                       for g, row in enumerate(confusion)])]
    segmentation = result["metrics"].get("segmentation", {})
    if segmentation.get("num_reference_vertebrae") is not None:
        by_position = result.get("matching", {}).get("name") == "position"
        parts += ["", ("Segmentation / detection (names ignored): detection rate " if by_position else
                       "Segmentation / identification: identification rate ") +
                  f"{cell(segmentation.get('identification_rate'))}, mean Dice "
                  f"{cell(segmentation.get('dice_mean'))}"
                  f", reference vertebrae {segmentation['num_reference_vertebrae']}, missed "
                  f"{segmentation['num_missed']}, extra {segmentation['num_extra']}"]
        if segmentation.get("num_predicted_unflagged") is not None:
            parts.append(f"Names of predicted vertebrae not flagged level_uncertain: right "
                         f"{cell(segmentation.get('identification_rate_unflagged'))} of "
                         f"{segmentation['num_predicted_unflagged']} ({segmentation['num_predicted_level_uncertain']} "
                         "flagged level_uncertain)")
    cases = result.get("cases", {})
    if cases.get("missing_predictions"):
        parts.append(f"Cases without prediction (counted as missed): {', '.join(cases['missing_predictions'])}")
    if cases.get("without_reference"):
        parts.append(f"Predicted cases without reference (not evaluated): {', '.join(cases['without_reference'])}")
    return "\n".join(parts)
