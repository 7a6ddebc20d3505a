"""The case report a reviewer signs: the differential and counts from the reviewed labels, flags,
the models that made the calls (name, sha256), every reclassification and the sign-off, as HTML
(jinja2, escaped) or PDF (fpdf2). A case that is not signed is exported marked as a draft."""

from __future__ import annotations

import datetime as _dt

from sqlalchemy import select
from sqlalchemy.orm import Session

from leukodx.service.db import Case, Cell, Result, User


def report_data(db: Session, case: Case) -> dict:
    from leukodx._versions import versions
    from leukodx.service.api import audit_rows
    from leukodx.service.review import differential

    cells = db.scalars(select(Cell).where(Cell.case_id == case.id).order_by(Cell.id)).all()
    runs = db.scalars(select(Result).where(Result.case_id == case.id).order_by(Result.id)).all()
    signer = db.get(User, case.signed_by) if case.signed_by else None
    recount = differential(cells)
    trail = [{**e, "at": e["at"][:19].replace("T", " ")} for e in audit_rows(db, case.id)]
    return {"case": {"id": case.id, "label": case.label, "status": case.status},
            "signed": case.status == "signed",
            "signed_by": signer.name if signer else None,
            "signed_at": case.signed_at.isoformat(timespec="seconds") if case.signed_at else None,
            "generated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "n_cells": len(cells), "n_reviewed": sum(c.label != c.model_label for c in cells),
            "counts": recount["counts"], "differential": recount["differential_percent"], "flags": recount["flags"],
            "analyses": [{"kind": r.kind, "model": r.model_name, "sha256": r.model_sha256,
                          "created": r.created.isoformat(timespec="seconds"),
                          "flags": (r.summary or {}).get("flags", [])} for r in runs],
            "audit": trail, "leukodx": versions().get("leukodx")}


def render_html(data: dict, templates) -> str:
    return templates.get_template("report.html").render(r=data)


def render_pdf(data: dict) -> bytes:
    from fpdf import FPDF

    pdf = FPDF(format="A4")
    pdf.set_auto_page_break(True, margin=15)
    pdf.add_page()
    width = pdf.w - pdf.l_margin - pdf.r_margin

    def line(text: str, size: int = 10, style: str = "") -> None:
        pdf.set_font("Helvetica", style, size)
        pdf.multi_cell(width, size * 0.55, _latin1(text), new_x="LMARGIN", new_y="NEXT")

    line(f"leukodx case report: {data['case']['label']}", 15, "B")
    line(f"case {data['case']['id']}; generated {data['generated']}; leukodx {data['leukodx']}", 8)
    pdf.ln(2)
    if data["signed"]:
        line(f"Signed by {data['signed_by']} at {data['signed_at']}", 11, "B")
    else:
        line(f"DRAFT: not signed (status {data['case']['status']})", 11, "B")
    pdf.ln(2)
    line(f"Differential (reviewed labels; {data['n_cells']} cells, {data['n_reviewed']} reclassified)", 12, "B")
    with pdf.table(col_widths=(3, 1, 1), text_align=("LEFT", "RIGHT", "RIGHT")) as table:
        pdf.set_font("Helvetica", "", 9)
        table.row(["class", "count", "% of leukocytes"])
        for name, count in data["counts"].items():
            pct = data["differential"].get(name)
            table.row([_latin1(name), str(count), "" if pct is None else f"{pct:.1f}"])
    pdf.ln(2)
    line("Flags", 12, "B")
    for flag in data["flags"] or ["none"]:
        line(f"- {flag}", 9)
    line("Analyses", 12, "B")
    for a in data["analyses"]:
        line(f"- {a['kind']}: model {a['model']} (sha256 {a['sha256']}), {a['created']}", 9)
    line("Audit trail", 12, "B")
    for e in data["audit"] or [{"at": "", "user": "", "action": "none", "before": "", "after": "", "cell_id": None}]:
        cell = f" cell {e['cell_id']}" if e["cell_id"] else ""
        line(f"- {e['at']} {e['user'] or ''} {e['action']}{cell}: {e['before'] or ''} -> {e['after'] or ''}", 9)
    return bytes(pdf.output())


def _latin1(text: str) -> str:
    """The PDF's core fonts are Latin-1: anything else is shown as '?'."""
    return str(text).encode("latin-1", "replace").decode("latin-1")
