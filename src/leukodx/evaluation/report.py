"""Evaluation reports: plots (confusion matrix, ROC, reliability) in Markdown and HTML."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path

import numpy as np

from leukodx import _atomic


def _figures(result: dict) -> dict[str, bytes]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    classes = result["classes"]
    out = {}
    cm = np.asarray(result["metrics"]["confusion_matrix"])
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(classes), 0.8 + 0.7 * len(classes)))
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=8, color="white" if v > cm.max() / 2 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix")
    out["confusion.png"] = _png(fig)

    y = np.asarray(result["roc_inputs"]["y_true"])
    proba = np.asarray(result["roc_inputs"]["proba"])
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for c, name in enumerate(classes):
        if 0 < (y == c).sum() < len(y):
            fpr, tpr, _ = roc_curve(y == c, proba[:, c])
            auc = result["metrics"]["per_class"][name]["auroc"]["value"]
            ax.plot(fpr, tpr, label=f"{name} ({auc:.3f})")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title("One-vs-rest ROC")
    ax.legend(fontsize=7)
    out["roc.png"] = _png(fig)

    rel = result["reliability"]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    centers = (np.arange(len(rel["count"])) + 0.5) / len(rel["count"])
    mask = np.asarray(rel["count"]) > 0
    ax.bar(centers[mask], np.asarray(rel["accuracy"])[mask], width=1 / len(centers), edgecolor="k", alpha=0.7)
    ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability (ECE {result['metrics']['ece']['value']:.3f})")
    out["reliability.png"] = _png(fig)
    plt.close("all")
    return out


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _fmt(entry: dict) -> str:
    """``value [lo, hi]`` of a ``{"value", "ci95"}`` estimate; ``n/a`` where it is undefined."""
    v, ci = entry.get("value"), entry.get("ci95")
    if v is None or not np.isfinite(v):
        return "n/a"
    return f"{v:.4f} [{ci[0]:.4f}, {ci[1]:.4f}]" if ci else f"{v:.4f}"


OVERALL = ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1", "macro_auroc", "ece")
PER_CLASS = ("sensitivity", "specificity", "ppv", "npv", "auroc")


def render_html(result: dict, figures: dict[str, bytes]) -> str:
    """The self-contained HTML report (jinja2 template, every value escaped)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("leukodx.evaluation", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    encoded = {name: base64.b64encode(data).decode() for name, data in figures.items()}
    return env.get_template("evaluation.html.j2").render(result=result, figures=encoded, fmt=_fmt,
                                                         overall=OVERALL, per_class=PER_CLASS)


def markdown_summary(result: dict, images: dict[str, str] | None = None) -> str:
    m = result["metrics"]
    lines = [
        f"# Evaluation of `{result['model']}`",
        "",
        f"Data: `{result['images']}`"
        + (f", dataset {result['dataset']} split {result['split']}" if result.get("dataset") else "")
        + f" (n = {result['n']}, fingerprint {result['dataset_fingerprint']}); "
        f"model sha256 {str(result.get('model_sha256'))[:12]}; backend {result.get('backend')}; seed {result['seed']}.",
        "",
        "| metric | value [95% bootstrap CI] |",
        "|---|---|",
    ]
    for key in OVERALL:
        lines.append(f"| {key} | {_fmt(m[key])} |")
    lines += ["", "| class | support | sensitivity | specificity | PPV | NPV | AUROC |", "|---|---|---|---|---|---|---|"]
    for cls, pc in m["per_class"].items():
        lines.append(f"| {cls} | {pc['support']} | " + " | ".join(
            _fmt(pc[k]) for k in PER_CLASS) + " |")
    if result.get("excluded_classes"):
        lines += ["", f"Folder classes the model does not know, left out: {', '.join(result['excluded_classes'])}."]
    if result.get("errors"):
        lines += ["", f"Unreadable files ({len(result['errors'])}):"] + [f"- {e['error']}" for e in result["errors"][:50]]
    if images:
        lines += [""] + [f"![{name}]({name})" for name in images]
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items())]
    return "\n".join(lines) + "\n"


def write_report(result: dict, directory: str | os.PathLike) -> Path:
    """Write report.md (+ PNG plots) and a self-contained report.html into ``directory``."""
    directory = Path(directory)
    figures = _figures(result)
    for name, data in figures.items():
        _atomic.write_bytes(directory / name, data)
    md = markdown_summary(result, {n: n for n in figures})
    _atomic.write_text(directory / "report.md", md)
    page = render_html(result, figures)
    _atomic.write_text(directory / "report.html", page)
    return directory / "report.html"
