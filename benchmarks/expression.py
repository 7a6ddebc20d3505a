"""Golub ALL/AML and B-ALL RNA-seq: every expression method under one protocol.

Golub: leave-one-out on the 38 training samples and train 38 -> independent 34; the best method is
chosen by leave-one-out alone. ball-rnaseq: leave-one-out on its 20 samples (4 subtypes x 5).
"""

from __future__ import annotations

from _common import write_result
from leukodx.omics.evaluate import evaluate_expression

CLAIM = "Prabhakar 2022, PNN on Golub: 95.705%"


def main() -> None:
    golub = evaluate_expression("golub")
    ball = evaluate_expression("ball-rnaseq")
    rows = []
    for name, m in golub["methods"].items():
        rows.append(["golub", name + (" (best by LOOCV)" if name == golub["best"] else ""),
                     f"{m['loocv_errors']}/38", f"{m['independent_correct']}/34",
                     f"{100 * m['independent_correct'] / 34:.1f}%",
                     ", ".join(x["sample"] for x in m["independent_misclassified"]) or "-"])
    for name, m in ball["methods"].items():
        rows.append(["ball-rnaseq", name + (" (best by LOOCV)" if name == ball["best"] else ""),
                     f"{m['loocv_errors']}/20", "-", "-",
                     ", ".join(x["sample"] for x in m["loocv_misclassified"]) or "-"])
    write_result("expression", {"golub": golub, "ball_rnaseq": ball, "paper_claim": CLAIM},
                 ["dataset", "method", "LOOCV errors", "independent correct", "independent accuracy",
                  "misclassified (independent / LOOCV)"], rows,
                 [f"Paper claim beside ours: {CLAIM}.",
                  "50 genes per fold (signal-to-noise for two classes, t-test/ANOVA otherwise), chosen inside every fold.",
                  ball["caveat"]])


if __name__ == "__main__":
    main()
