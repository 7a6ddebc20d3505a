"""The HTML case report: summary, flags, and every image with its thumbnail and prediction.

Rendered from the jinja2 template ``templates/case.html.j2`` with autoescaping, so file names and
labels can never inject markup.
"""

from __future__ import annotations

import base64


def render_case_html(result: dict) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("leukodx.diagnosis", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    rows = []
    for r in sorted(result["rows"], key=lambda r: (not r["unsure"], r["probability"])):
        probs = sorted(r["probabilities"].items(), key=lambda kv: -kv[1])
        second = f"{probs[1][0]} {probs[1][1]:.2f}" if len(probs) > 1 else ""
        rows.append({**r, "second": second})
    thumbs = {name: base64.b64encode(data).decode() for name, data in result.get("_thumbnails", {}).items()}
    heatmaps = {name: base64.b64encode(data).decode() for name, data in result.get("_explanations", {}).items()}
    model = result["model"]
    return env.get_template("case.html.j2").render(
        result=result, model=model, acc=model.get("test_accuracy") or None, s=result["summary"],
        smear=result["smear"]["summary"] if "smear" in result else None, rows=rows, thumbs=thumbs,
        heatmaps=heatmaps)
