"""The HTML case report: summary, flags, and every image with its thumbnail and prediction."""

from __future__ import annotations

import base64
import html


def _esc(x) -> str:
    return html.escape(str(x))


def render_case_html(result: dict) -> str:
    thumbs = result.get("_thumbnails", {})
    s = result["summary"]
    model = result["model"]
    acc = model.get("test_accuracy") or {}
    parts = [
        f"<h1>leukodx case report</h1><p><b>Case:</b> {_esc(result['case'])}<br><b>Date:</b> {_esc(result['created'])}"
        f"<br><b>Input kind:</b> {_esc(result['kind'])} ({_esc(result['kind_evidence'])})"
        f"<br><b>Model:</b> {_esc(model['name'])} (sha256 {_esc(str(model['sha256'])[:12])}, backend {_esc(model['backend'])}"
        + (f", test accuracy {acc['value']:.3f} [{acc['ci95'][0]:.3f}, {acc['ci95'][1]:.3f}]" if acc else "")
        + ")</p>",
        "<p class='warn'>Research software, not a medical device: every result needs review by a qualified person.</p>",
    ]
    if result["flags"]:
        parts.append("<h2>Flags</h2><ul>" + "".join(f"<li>{_esc(f)}</li>" for f in result["flags"]) + "</ul>")
    parts.append("<h2>Summary</h2>")
    if result["kind"] == "cells":
        parts.append(f"<p>{s['leukocytes_counted']} leukocytes counted; {s['unsure']} images unsure (not counted).</p>")
        parts.append("<table><tr><th>cell type</th><th>count</th><th>% of leukocytes</th></tr>" + "".join(
            f"<tr><td>{_esc(c)}</td><td>{n}</td><td>{s['differential_percent'].get(c, '')}</td></tr>"
            for c, n in s["counts"].items()) + "</table>")
    else:
        parts.append(f"<p>Case call: <b>{_esc(s['case_call'])}</b> (field agreement {s['field_agreement']:.0%}).</p>")
        parts.append("<table><tr><th>stage</th><th>mean probability</th><th>fields</th></tr>" + "".join(
            f"<tr><td>{_esc(c)}</td><td>{p:.3f}</td><td>{s['fields_per_stage'][c]}</td></tr>"
            for c, p in s["stage_probabilities"].items()) + "</table>")
    if "smear" in result:
        sm = result["smear"]["summary"]
        parts.append("<h2>Cells found in the fields</h2><p>" + ", ".join(
            f"{_esc(k)}: {v}" for k, v in sm["counts"].items()) + f" ({sm['white_cells_typed']} white cells typed, "
            f"{sm['unsure']} unsure, {sm['blast_like']} blast-like)</p>")
        parts.append("<table><tr><th>white-cell type</th><th>count</th><th>%</th></tr>" + "".join(
            f"<tr><td>{_esc(c)}</td><td>{sm['white_cell_types'][c]}</td><td>{p}</td></tr>"
            for c, p in sm["differential_percent"].items()) + "</table>")
    parts.append("<h2>Images</h2><table><tr><th></th><th>file</th><th>prediction</th><th>probability</th><th>next</th></tr>")
    for r in sorted(result["rows"], key=lambda r: (not r["unsure"], r["probability"])):
        thumb = thumbs.get(r["input"])
        img = f"<img src='data:image/jpeg;base64,{base64.b64encode(thumb).decode()}'>" if thumb else ""
        probs = sorted(r["probabilities"].items(), key=lambda kv: -kv[1])
        second = f"{_esc(probs[1][0])} {probs[1][1]:.2f}" if len(probs) > 1 else ""
        cls = " class='unsure'" if r["unsure"] else ""
        parts.append(f"<tr{cls}><td>{img}</td><td>{_esc(r['input'])}</td><td>{_esc(r['top_class'])}"
                     f"{' (unsure)' if r['unsure'] else ''}</td><td>{r['probability']:.3f}</td><td>{second}</td></tr>")
    parts.append("</table>")
    if result["errors"]:
        parts.append("<h2>Unreadable files</h2><ul>" + "".join(f"<li>{_esc(e['error'])}</li>" for e in result["errors"]) + "</ul>")
    parts.append("<p class='small'>" + _esc(", ".join(f"{k} {v}" for k, v in result["versions"].items())) + "</p>")
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}td,th{border:1px solid #ccc;padding:3px 8px}"
             "table{border-collapse:collapse}tr.unsure{background:#fff3cd}.warn{color:#8a1c1c}.small{font-size:80%;color:#666}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>leukodx case report</title><style>{style}</style>"
            f"</head><body>{''.join(parts)}</body></html>")
