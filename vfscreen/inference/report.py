"""``<case>_report.png``: a curved sagittal reformat through the spine for a decision at a glance.

The sampling surface follows the spine: for every head-feet position ``z`` the left-right coordinate is interpolated
between the vertebral body centres, so a scoliotic spine stays in the picture; antero-posterior (``y``) and head-feet
(``z``) distances are true millimetres (anterior left, head up, the radiological sagittal view). Every vertebra is
outlined in its grade's colour (G0 green, G1 yellow, G2 orange, G3 red, grey = not graded), its name, grade and
P(fracture) are written beside it ('!' in front: flagged for review by the screening rule of
vfscreen.inference.screening), and the three measured heights are drawn as white lines a ruler can check.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from scipy import ndimage  # noqa: E402

from vfscreen.inference.geometry import array_indices_to_world, world_to_array_indices  # noqa: E402

GRADE_COLOURS = {0: "#2ca02c", 1: "#f2d50f", 2: "#ff7f0e", 3: "#d62728", None: "#9e9e9e"}
MAX_VERDICT_NAMES = 3  # the verdict line names the highest-scoring flagged vertebrae, then "and N more"
FLAG_COLOUR = "#e6007e"  # flagged for review (screening rule): a colour no grade uses
GRADE_LABELS = {0: "G0 normal", 1: "G1 mild", 2: "G2 moderate", 3: "G3 severe", None: "not graded"}
DISPLAY_WINDOW_HU = (-250.0, 1250.0)  # bone-friendly window that still shows soft tissue
MAX_PIXELS = 700
LABEL_CONFIDENCE_WARNING = 0.8  # names with a lower posterior get a '?'
AIR_HU = -1024.0


def _world_bounds(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    size = np.array(sitk.GetArrayViewFromImage(image).shape) - 1
    corners = np.array([[k, j, i] for k in (0, size[0]) for j in (0, size[1]) for i in (0, size[2])], float)
    world = array_indices_to_world(image, corners)
    return world.min(axis=0), world.max(axis=0)


def spine_curve(vertebrae: list[dict], morphometry: dict, image: sitk.Image):
    """(z positions ascending, x positions) of the body centres; the image's centre line when no vertebra."""
    points = []
    for vertebra in vertebrae:
        measured = morphometry.get(vertebra["label"])
        centre = measured.body_centroid_mm if measured is not None and measured.body_centroid_mm is not None \
            else np.asarray(vertebra["centroid_mm"])
        points.append(centre)
    if not points:
        low, high = _world_bounds(image)
        return np.array([(low[2] + high[2]) / 2]), np.array([(low[0] + high[0]) / 2]), (low[1] + high[1]) / 2
    points = np.array(sorted(points, key=lambda p: p[2]))
    return points[:, 2], points[:, 0], float(np.median(points[:, 1]))


def curved_sagittal(image: sitk.Image, verse_map: np.ndarray, curve_z, curve_x, centre_y: float,
                    half_depth_mm: float = 90.0):
    """Sample CT and labels on the curved surface. Returns (ct (R, C), labels (R, C), extent for imshow, pixel)."""
    low, high = _world_bounds(image)
    y_low, y_high = max(low[1], centre_y - half_depth_mm), min(high[1], centre_y + half_depth_mm)
    if y_high - y_low < 20:
        y_low, y_high = low[1], high[1]
    z_low, z_high = low[2], high[2]
    pixel = max(0.5, min(image.GetSpacing()), max(y_high - y_low, z_high - z_low) / MAX_PIXELS)
    ys = np.arange(y_low, y_high + pixel / 2, pixel)
    zs = np.arange(z_high, z_low - pixel / 2, -pixel)  # rows top (head) -> bottom (feet)
    xs = np.interp(zs, curve_z, curve_x)
    grid_z, grid_y = np.meshgrid(zs, ys, indexing="ij")
    world = np.stack([np.broadcast_to(xs[:, None], grid_z.shape), grid_y, grid_z], axis=-1)  # (R, C, 3)
    indices = world_to_array_indices(image, world).transpose(2, 0, 1)  # (3, R, C)
    ct = ndimage.map_coordinates(sitk.GetArrayViewFromImage(image).astype(np.float32), indices, order=1,
                                 mode="constant", cval=AIR_HU)
    labels = ndimage.map_coordinates(verse_map, indices, order=0, mode="constant", cval=0)
    extent = (ys[0] - pixel / 2, ys[-1] + pixel / 2, zs[-1] - pixel / 2, zs[0] + pixel / 2)
    return ct, labels, extent, pixel


def _verdict(case_json: dict) -> tuple[str, str]:
    patient = case_json["patient"]
    if patient["any_fracture"]:
        flagged = {v["name"]: v["grade"] for v in case_json["vertebrae"] if v.get("suspected")}
        names = patient["suspected"]  # highest score first
        uncertain = {v["name"] for v in case_json["vertebrae"] if v.get("level_uncertain")}
        shown = ", ".join(f"{name}{'? level uncertain' if name in uncertain else ''} (G{flagged[name]})"
                          for name in names[:MAX_VERDICT_NAMES])
        more = f" and {len(names) - MAX_VERDICT_NAMES} more" if len(names) > MAX_VERDICT_NAMES else ""
        return f"FRACTURE SUSPECTED - {shown}{more}", GRADE_COLOURS[max(list(flagged.values()) + [1])]
    return patient["message"].upper() if patient["num_vertebrae"] else "NO VERTEBRA FOUND", \
        GRADE_COLOURS[0] if patient["num_vertebrae"] else "#555555"


def _density_text(case_json: dict) -> str:
    density = (case_json["patient"].get("morphometry") or {}).get("density")
    if not density:
        return ""
    verdict = "low (<= {:.0f} HU, osteoporosis possible)".format(density["threshold_hu"]) \
        if density["low_density"] else "not low"
    return f"; {density['level']} {density['trabecular_hu']:.0f} HU: {verdict}"


def _rule_text(model: dict) -> str:
    screening = model.get("screening", {})
    if screening.get("threshold_fused") is not None:
        return f"fused P >= {screening['threshold_fused']:.2f}, threshold from validation"
    return "argmax grade > 0"


def render_report(path, image: sitk.Image, verse_map: np.ndarray, case_json: dict, morphometry: dict) -> None:
    """Draw the report and save it as PNG to ``path``."""
    vertebrae = case_json["vertebrae"]
    curve_z, curve_x, centre_y = spine_curve(vertebrae, morphometry, image)
    ct, labels, extent, _ = curved_sagittal(image, verse_map, curve_z, curve_x, centre_y)
    width_mm, height_mm = extent[1] - extent[0], extent[3] - extent[2]
    image_height_in = 9.0
    image_width_in = max(3.0, image_height_in * width_mm / max(height_mm, 1.0))
    # layout in inches: top band (case id + legend, then the verdict), image, bottom band (axis label, footnote)
    text_column_in, top_in, bottom_in = 3.4, 1.3, 0.75
    total_width_in = image_width_in + text_column_in + 0.6
    total_height_in = image_height_in + top_in + bottom_in
    figure = plt.figure(figsize=(total_width_in, total_height_in), dpi=100)
    axes = figure.add_axes((text_column_in / total_width_in, bottom_in / total_height_in,
                            image_width_in / total_width_in, image_height_in / total_height_in))
    axes.imshow(ct, cmap="gray", vmin=DISPLAY_WINDOW_HU[0], vmax=DISPLAY_WINDOW_HU[1], extent=extent,
                origin="upper", interpolation="bilinear")
    ys = np.linspace(extent[0], extent[1], ct.shape[1])
    zs = np.linspace(extent[3], extent[2], ct.shape[0])
    text_items = []
    for vertebra in vertebrae:
        mask = labels == vertebra["label"]
        colour = GRADE_COLOURS[vertebra["grade"]]
        flagged = bool(vertebra.get("suspected"))
        if mask.any():
            if flagged:  # a wide halo in the flag colour under the grade-coloured outline
                axes.contour(ys, zs, mask.astype(float), levels=[0.5], colors=[FLAG_COLOUR], linewidths=5.0,
                             alpha=0.7)
            axes.contour(ys, zs, mask.astype(float), levels=[0.5], colors=[colour], linewidths=1.8,
                         linestyles="dashed" if vertebra["truncated"] else "solid")
        measured = morphometry.get(vertebra["label"])
        centre = measured.body_centroid_mm if measured is not None and measured.body_centroid_mm is not None \
            else np.asarray(vertebra["centroid_mm"])
        anchor = (float(np.clip(centre[1], extent[0], extent[1])), float(centre[2]))
        if mask.any():  # the leader line ends at the anterior wall, in the row of the body centre
            row = int(np.argmin(np.abs(zs - anchor[1])))
            columns = np.nonzero(mask[row])[0]
            if len(columns):
                anchor = (float(ys[columns.min()]), anchor[1])
        if measured is not None and measured.height_endpoints_mm is not None:
            for top, bottom in measured.height_endpoints_mm:
                axes.plot([top[1], bottom[1]], [top[2], bottom[2]], color="white", linewidth=0.8, alpha=0.9)
        grade_text = f"G{vertebra['grade']}" if vertebra["grade"] is not None else "--"
        p_text = f"P {vertebra['p_fracture']:.2f}" if vertebra["p_fracture"] is not None else \
            "implausible" if vertebra.get("implausible") else "truncated" if vertebra["truncated"] else "no grader"
        morph_text = ""
        if vertebra["genant_ratio"] is not None:
            interval = vertebra.get("genant_ratio_interval")
            borderline = "~" if vertebra.get("morph_borderline") else ""  # interval reaches a neighbouring band
            morph_text = f"  h {vertebra['genant_ratio']:.2f}{borderline}" + (
                f" [{interval[0]:.2f}-{interval[1]:.2f}]" if interval else "")
        if vertebra.get("trabecular_hu") is not None:
            morph_text += f"  {vertebra['trabecular_hu']:.0f} HU"
        unsure = vertebra.get("level_uncertain", vertebra["label_confidence"] is not None
                              and vertebra["label_confidence"] < LABEL_CONFIDENCE_WARNING)
        name = f"{vertebra['name']}?" if unsure else vertebra["name"]
        flag = "!" if flagged else " "
        text_items.append((anchor, f"{flag}{name:>4}  {grade_text}  {p_text}{morph_text}", colour, flagged))
    # labels in the left (anterior) margin, spread so they never overlap, with a leader line to the vertebra
    min_gap = height_mm * 0.028
    placed = []
    for anchor, text, colour, flagged in sorted(text_items, key=lambda item: -item[0][1]):
        z_text = anchor[1] if not placed else min(anchor[1], placed[-1] - min_gap)
        placed.append(z_text)
        axes.annotate(text, xy=anchor, xytext=(extent[0] - 0.03 * width_mm, z_text), textcoords="data",
                      color=colour, fontsize=10, fontweight="bold", fontfamily="monospace", va="center", ha="right",
                      annotation_clip=False,
                      bbox=dict(boxstyle="round,pad=0.25", facecolor="none", edgecolor=FLAG_COLOUR, linewidth=1.6)
                      if flagged else None,
                      arrowprops=dict(arrowstyle="-", color=colour, linewidth=0.8, alpha=0.8))
    axes.set_xlim(extent[0], extent[1])
    axes.set_ylim(extent[2], extent[3])
    axes.set_xlabel("anterior  <-  mm  ->  posterior", fontsize=8)
    axes.tick_params(labelsize=7)
    axes.yaxis.tick_right()  # the left margin belongs to the vertebra labels
    verdict, verdict_colour = _verdict(case_json)
    def from_top(inches):
        return 1.0 - inches / total_height_in

    figure.text(0.02, from_top(0.12), f"{case_json['case_id']}", fontsize=13, fontweight="bold", va="top")
    figure.text(0.02, from_top(0.78), verdict, fontsize=12, fontweight="bold", color=verdict_colour, va="top")
    model = case_json.get("model", {})
    figure.text(0.02, 0.1 / total_height_in,
                f"vfscreen {case_json.get('vfscreen_version', '')} | {model.get('dataset', '')} folds "
                f"{(model.get('grader') or {}).get('folds', 'no grader')} | research use, not a diagnosis\n"
                f"P = P(fracture) = 1 - P(G0); h = min/max body height (morphometry) [95 % interval], '~' = "
                f"borderline Genant grade; HU = trabecular median{_density_text(case_json)}\n"
                f"'?' = level uncertain (name may be off by whole levels); '!' = flagged for review ("
                f"{_rule_text(model)})", fontsize=7, color="#444444")
    handles = [Patch(facecolor=GRADE_COLOURS[g], label=GRADE_LABELS[g]) for g in (0, 1, 2, 3, None)]
    handles.append(Line2D([0], [0], color="white", markeredgecolor="black", label="measured heights"))
    handles.append(Line2D([0], [0], color=FLAG_COLOUR, linewidth=4, alpha=0.7, label="! flagged for review"))
    legend = figure.legend(handles=handles, loc="upper right", fontsize=9, frameon=True, facecolor="#222222",
                           labelcolor="white", bbox_to_anchor=(0.99, from_top(0.05)), ncol=3)
    legend.get_frame().set_edgecolor("#222222")
    if not vertebrae:
        axes.text(0.5, 0.5, "no vertebra found", transform=axes.transAxes, color="white", fontsize=16,
                  ha="center", va="center", bbox=dict(facecolor="black", alpha=0.6))
    figure.savefig(path, format="png", facecolor="white")
    plt.close(figure)
