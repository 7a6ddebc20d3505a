// leukodx review screen. Text from the server is only ever set with textContent (never innerHTML):
// a case label or a file name cannot run as script. Changes carry the session's CSRF token.
"use strict";

const csrf = () => (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

function say(text, ok) {
  const box = document.getElementById("message");
  box.textContent = text;
  box.className = ok ? "ok" : "error";
  box.hidden = !text;
}

async function api(method, url, body) {
  const init = {method, credentials: "same-origin", headers: {"X-CSRF-Token": csrf()}};
  if (body instanceof FormData || body instanceof URLSearchParams) init.body = body;
  else if (body !== undefined) { init.body = JSON.stringify(body); init.headers["Content-Type"] = "application/json"; }
  const r = await fetch(url, init);
  if (r.status === 401 && !url.endsWith("/api/session")) { location.href = "/login"; throw new Error("logged out"); }
  const data = (r.headers.get("Content-Type") || "").includes("json") ? await r.json() : null;
  if (!r.ok) {
    const detail = data && data.detail;
    const text = typeof detail === "string" ? detail
      : detail && detail.rejected ? detail.rejected.map(x => x.error).join("; ")
      : Array.isArray(detail) ? detail.map(d => d.msg).join("; ") : `${r.status} ${r.statusText}`;
    throw new Error(text);
  }
  return data;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") node.textContent = v;
    else if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) if (c != null) node.append(c);
  return node;
}

const when = iso => iso ? new Date(iso).toLocaleString() : "";
const sleep = ms => new Promise(r => setTimeout(r, ms));

async function waitForJob(id, line) {
  for (;;) {
    const job = await api("GET", `/api/jobs/${id}`);
    line.textContent = `analysis ${job.id} (${job.kind}): ${job.status}` + (job.error ? ` - ${job.error}` : "");
    if (job.status === "done" || job.status === "failed") return job;
    await sleep(1000);
  }
}

// ---------------------------------------------------------------- login
function loginPage() {
  const form = document.getElementById("login-form");
  form.addEventListener("submit", async ev => {
    ev.preventDefault();
    try {
      await api("POST", "/api/session", new URLSearchParams(new FormData(form)));
      location.href = "/cases";
    } catch (e) { say(e.message); }
  });
}

// ---------------------------------------------------------------- case list
async function casesPage() {
  const body = document.querySelector("#case-list tbody");
  async function refresh() {
    const cases = await api("GET", "/api/cases");
    body.replaceChildren(...cases.map(c => el("tr", {"data-case": c.id},
      el("td", {text: c.id}),
      el("td", {}, el("a", {href: `/cases/${c.id}`, text: c.label})),
      el("td", {}, el("span", {class: `status ${c.status}`, text: c.status})),
      el("td", {text: c.files}), el("td", {text: c.cells}),
      el("td", {text: c.job ? `${c.job.kind}: ${c.job.status}` : ""}),
      el("td", {text: when(c.created)}))));
    return cases.some(c => c.job && (c.job.status === "queued" || c.job.status === "running"));
  }
  const form = document.getElementById("new-case");
  const progress = document.getElementById("progress");
  form.addEventListener("submit", async ev => {
    ev.preventDefault();
    const data = new FormData(form);
    try {
      progress.textContent = "creating the case";
      const {id} = await api("POST", "/api/cases", {label: data.get("label")});
      const files = new FormData();
      for (const f of form.elements.files.files) files.append("files", f, f.name);
      progress.textContent = `uploading ${form.elements.files.files.length} file(s)`;
      const up = await api("POST", `/api/cases/${id}/files`, files);
      if (up.rejected.length) say(`${up.rejected.length} file(s) refused: ` + up.rejected.map(r => r.error).join("; "));
      const {job_id} = await api("POST", `/api/cases/${id}/analyses`, {kind: data.get("kind")});
      refresh();
      const job = await waitForJob(job_id, progress);
      if (job.status === "done") location.href = `/cases/${id}`;
      else refresh();
    } catch (e) { say(e.message); progress.textContent = ""; }
  });
  while (await refresh()) await sleep(2000);
}

// ---------------------------------------------------------------- case view
const BOX_COLOURS = {WBC: "#2858ff", RBC: "#dc2828", Platelets: "#14a03c", review: "#ff8c00"};

async function casePage() {
  const caseId = document.body.dataset.case;
  let data, classes = [], selected = null;
  const tiles = new Map(), groups = new Map();
  const gallery = document.getElementById("gallery");

  function showCounts(recount) {
    const tbody = document.querySelector("#differential tbody");
    tbody.replaceChildren(...Object.entries(recount.counts).map(([name, n]) => el("tr", {"data-class": name},
      el("td", {text: name}), el("td", {class: "n", text: n}),
      el("td", {class: "n", text: name in recount.differential_percent ? recount.differential_percent[name].toFixed(1) : ""}))));
    document.getElementById("flags").replaceChildren(...(recount.flags.length ? recount.flags : ["none"]).map(f => el("li", {text: f})));
    for (const [name, group] of groups) group.querySelector("h3").textContent = `${name} (${recount.counts[name] || 0})`;
  }

  function cellFlags(c) {
    const flags = [];
    if (c.reviewed) flags.push(["reviewed", "reviewed"]);
    if (c.ood) flags.push(["ood", "ood"]);
    if (c.unsure) flags.push(["unsure", "unsure"]);
    if (c.prediction_set && c.prediction_set.length > 1) flags.push(["set", `set: ${c.prediction_set.join("/")}`]);
    return flags;
  }

  function tileFor(c) {
    const tile = el("figure", {class: "tile", tabIndex: -1, "data-cell": c.id},
      el("img", {src: `/api/cells/${c.id}/thumbnail`, alt: `cell ${c.id}`, loading: "lazy", width: 96, height: 96}),
      el("figcaption"));
    tile.addEventListener("click", () => select(c.id));
    tile.addEventListener("dblclick", () => zoom(c.id));
    return tile;
  }

  function paintTile(c) {
    const tile = tiles.get(c.id);
    tile.classList.toggle("flagged", c.unsure || !!c.ood);
    tile.classList.toggle("reviewed", c.reviewed);
    tile.querySelector("figcaption").replaceChildren(
      el("span", {class: "p", text: `${c.reviewed ? "model: " : ""}${c.model_label} ${c.probability.toFixed(2)}`}),
      ...cellFlags(c).map(([k, t]) => el("span", {class: `badge ${k}`, text: t})));
  }

  function group(name) {
    if (!groups.has(name)) {
      const section = el("section", {class: "group", "data-class": name}, el("h3", {text: name}), el("div", {class: "grid"}));
      groups.set(name, section);
      // groups in the model's class order
      const after = [...groups.keys()].filter(n => classes.indexOf(n) > classes.indexOf(name))
        .map(n => groups.get(n)).find(s => s.isConnected);
      gallery.insertBefore(section, after || null);
    }
    return groups.get(name);
  }

  function order() { return [...gallery.querySelectorAll(".tile")].map(t => Number(t.dataset.cell)); }

  function select(id) {
    if (selected !== null && tiles.has(selected)) tiles.get(selected).classList.remove("selected");
    selected = id;
    if (id === null) return;
    const tile = tiles.get(id);
    tile.classList.add("selected");
    tile.focus({preventScroll: true});
    tile.scrollIntoView({block: "nearest"});
  }

  async function reclassify(id, label) {
    if (data.case.status === "signed") { say("this case is signed: amend it to change it"); return; }
    const cell = data.cells.find(c => c.id === id);
    if (!cell || cell.label === label) return;
    try {
      const res = await api("PATCH", `/api/cells/${id}`, {label});
      Object.assign(cell, res.cell);
      group(cell.label).querySelector(".grid").append(tiles.get(id));
      paintTile(cell);
      showCounts(res);
      say(`cell ${id}: ${cell.model_label} -> ${label}`, true);
      select(id);
      loadAudit();
    } catch (e) { say(e.message); }
  }

  function zoom(id) {
    const cell = data.cells.find(c => c.id === id);
    const box = document.getElementById("zoom");
    document.getElementById("zoom-img").src = `/api/cells/${id}/image`;
    const probs = Object.entries(cell.probabilities).sort((a, b) => b[1] - a[1]).slice(0, 5);
    document.getElementById("zoom-info").replaceChildren(
      el("strong", {text: `cell ${id}: ${cell.label}`}),
      el("span", {text: ` (model ${cell.model_label}; file ${cell.name || cell.file_id})`}),
      el("ul", {}, ...probs.map(([k, p]) => el("li", {text: `${k}: ${p.toFixed(3)}`}))),
      el("p", {text: cellFlags(cell).map(f => f[1]).join(", ")}));
    box.hidden = false;
  }

  function closeZoom() { document.getElementById("zoom").hidden = true; }

  function renderGallery() {
    gallery.replaceChildren();
    groups.clear(); tiles.clear();
    if (!data.cells.length) { gallery.append(el("p", {text: "No cells in this case yet."})); return; }
    for (const c of data.cells) { tiles.set(c.id, tileFor(c)); paintTile(c); }
    for (const name of classes) {
      const members = data.cells.filter(c => c.label === name);
      if (members.length) group(name).querySelector(".grid").append(...members.map(c => tiles.get(c.id)));
    }
  }

  function renderClasses() {
    const signed = data.case.status === "signed";
    document.getElementById("classes").replaceChildren(...classes.map((name, i) =>
      el("button", {type: "button", disabled: signed, "data-class": name, text: `${i < 9 ? i + 1 : ""} ${name}`,
                    onclick: () => selected !== null && reclassify(selected, name)})));
  }

  function renderFields() {
    const host = document.getElementById("fields");
    const fields = data.analyses.filter(a => a.kind === "fields").flatMap(a => a.summary.fields || []);
    if (!fields.length) { host.replaceChildren(el("p", {text: "No smear fields in this case."})); return; }
    const legend = el("div", {class: "legend"}, ...Object.keys(BOX_COLOURS).map(k =>
      el("span", {}, el("i", {class: `key-${k}`}), k === "review" ? "unsure / blast review" : k)));
    host.replaceChildren(legend, ...fields.map(f => {
      const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
      svg.setAttribute("viewBox", `0 0 ${f.size[0]} ${f.size[1]}`);
      const stroke = Math.max(2, f.size[0] / 500);
      for (const b of f.boxes) {
        const r = document.createElementNS(svg.namespaceURI, "rect");
        const [x0, y0, x1, y1] = b.box;
        Object.entries({x: x0, y: y0, width: x1 - x0, height: y1 - y0, fill: "none",
          stroke: b.review ? BOX_COLOURS.review : BOX_COLOURS[b.kind] || "#000", "stroke-width": stroke}).forEach(([k, v]) => r.setAttribute(k, v));
        const t = document.createElementNS(svg.namespaceURI, "title");
        t.textContent = `${b.kind}${b.cell_type ? ": " + b.cell_type : ""} (${b.score.toFixed(2)})`;
        r.append(t);
        svg.append(r);
      }
      const name = (data.files || {})[f.file_id] || `file ${f.file_id}`;
      return el("figure", {class: "field"},
        el("div", {class: "overlay"}, el("img", {src: `/api/files/${f.file_id}/preview`, alt: name}), svg),
        el("figcaption", {text: `${name}: ${f.boxes.length} cells` + (f.counted ? "" : " (not counted)") +
          (f.flags.length ? ` - ${f.flags.join("; ")}` : "")}));
    }));
  }

  async function loadAudit() {
    const rows = await api("GET", `/api/cases/${caseId}/audit`);
    document.querySelector("#audit tbody").replaceChildren(...rows.map(e => el("tr", {},
      el("td", {text: when(e.at)}), el("td", {text: e.user}), el("td", {text: e.action}),
      el("td", {text: e.cell_id || ""}), el("td", {text: e.before || ""}), el("td", {text: e.after || ""}))));
  }

  function renderHead() {
    const c = data.case;
    document.getElementById("case-title").textContent = c.label;
    document.title = `${c.label} · leukodx review`;
    const st = document.getElementById("case-status");
    st.textContent = c.status; st.className = `status ${c.status}`;
    document.getElementById("signed-line").textContent = c.status === "signed" ? `signed by ${c.signed_by} at ${when(c.signed_at)}` : "";
    document.getElementById("signoff").hidden = c.status !== "analysed";
    document.getElementById("amend").hidden = c.status !== "signed";
    document.getElementById("models").replaceChildren(...data.analyses.map(a =>
      el("li", {text: `${a.kind}: ${a.model} (sha256 ${(a.model_sha256 || "").slice(0, 12)}...)`})));
  }

  async function load() {
    data = await api("GET", `/api/cases/${caseId}/results`);
    const detail = await api("GET", `/api/cases/${caseId}`);
    data.files = Object.fromEntries(detail.files.map(f => [f.id, f.name]));
    classes = data.cells.length ? Object.keys(data.cells[0].probabilities) : [];
    renderHead(); renderClasses(); renderGallery(); showCounts(data); renderFields(); loadAudit();
    gallery.dataset.ready = "1";
    const pending = detail.jobs.filter(j => j.status === "queued" || j.status === "running").pop();
    if (pending) {
      await waitForJob(pending.id, document.getElementById("job-line"));
      return load();
    }
    const failed = detail.jobs.filter(j => j.status === "failed").pop();
    document.getElementById("job-line").textContent = failed ? `analysis ${failed.id} failed: ${failed.error}` : "";
  }

  document.querySelectorAll(".tabs button").forEach(b => b.addEventListener("click", () => {
    document.querySelectorAll(".tabs button").forEach(x => x.classList.toggle("active", x === b));
    document.querySelectorAll(".tab").forEach(t => { t.hidden = t.id !== b.dataset.tab; });
  }));
  document.getElementById("zoom-close").addEventListener("click", closeZoom);
  document.getElementById("signoff").addEventListener("click", async () => {
    try { await api("POST", `/api/cases/${caseId}/signoff`); say("case signed", true); await load(); }
    catch (e) { say(e.message); }
  });
  document.getElementById("amend").addEventListener("click", async () => {
    const reason = prompt("Reason for the amendment (recorded in the audit trail):");
    if (!reason) return;
    try { await api("POST", `/api/cases/${caseId}/amend`, {reason}); say("case reopened for amendment", true); await load(); }
    catch (e) { say(e.message); }
  });
  document.addEventListener("keydown", ev => {
    if (ev.target.tagName === "INPUT" || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (ev.key === "Escape") return closeZoom();
    if (!document.getElementById("zoom").hidden) return;
    const ids = order();
    if (!ids.length) return;
    if (ev.key === "ArrowRight" || ev.key === "ArrowDown") select(ids[Math.min(ids.length - 1, ids.indexOf(selected) + 1)]);
    else if (ev.key === "ArrowLeft" || ev.key === "ArrowUp") select(ids[Math.max(0, ids.indexOf(selected) - 1)]);
    else if ((ev.key === "Enter" || ev.key === "z") && selected !== null) zoom(selected);
    else if (/^[1-9]$/.test(ev.key) && selected !== null && classes[Number(ev.key) - 1]) reclassify(selected, classes[Number(ev.key) - 1]);
    else return;
    ev.preventDefault();
  });
  try { await load(); } catch (e) { say(e.message); }
}

// ---------------------------------------------------------------- every page
document.addEventListener("DOMContentLoaded", () => {
  const logout = document.getElementById("logout");
  if (logout) logout.addEventListener("click", async () => {
    try { await api("DELETE", "/api/session"); } finally { location.href = "/login"; }
  });
  const page = {login: loginPage, cases: casesPage, case: casePage}[document.body.dataset.page];
  if (page) page();
});
