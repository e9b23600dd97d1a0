"""The bucket web UI: one self-contained page (no build step, no CDN) and the JSON it draws.

`bucket_document` is what `/api/v1/bucket` answers: every committed block of a tenant with its
state (live, marked for deletion, no-compact, superseded), totals per tier, time ranges no live
block covers, and — when the server was given one — the retention policy in force and what
`retention plan` would do now.
"""

from __future__ import annotations

import time
from typing import Callable

from blocks.meta import Resolution

TIERS = ("raw", "5m", "1h", "1d")


def block_state(ulid: str, live: set[str], marked: dict, no_compact: dict) -> str:
    """live | marked | no-compact | superseded (the first that applies, marks first)."""
    if ulid in no_compact:
        return "no-compact"
    if ulid in marked:
        return "marked"
    return "live" if ulid in live else "superseded"


def uncovered(spans: list[tuple[int, int]]) -> list[list[int]]:
    """Gaps between the union of [start, end) spans, inside their overall range."""
    gaps: list[list[int]] = []
    end = None
    for a, b in sorted(spans):
        if end is not None and a > end:
            gaps.append([end, a])
        end = b if end is None else max(end, b)
    return gaps


def bucket_document(engine, tenant: str, tenants: list[str],
                    retention_info: Callable[[str], dict] | None = None) -> dict:
    """The UI's data for one tenant."""
    listing, live_metas = engine.listing(tenant), engine.readable(tenant)
    live = {m.ulid for m in live_metas}
    marked, no_compact = listing.deletion_marks, listing.no_compact_marks
    blocks = []
    totals = {t: {"blocks": 0, "live_blocks": 0, "bytes": 0, "live_bytes": 0, "samples": 0, "live_samples": 0}
              for t in TIERS}
    for m in sorted(listing.metas, key=lambda m: (m.resolution_ms, m.min_time, m.ulid)):
        tier = Resolution(m.resolution_ms).label
        state = block_state(m.ulid, live, marked, no_compact)
        dm, nc = marked.get(m.ulid), no_compact.get(m.ulid)
        blocks.append({"ulid": m.ulid, "tier": tier, "min_time": m.min_time, "max_time": m.max_time,
                       "series": m.stats.series, "samples": m.stats.samples, "bytes": m.stats.bytes,
                       "level": m.level, "version": m.version, "sources": list(m.sources),
                       "parents": list(m.parents), "state": state, "live": m.ulid in live,
                       "deletion_time_ms": dm.deletion_time_ms if dm else None,
                       "mark_reason": dm.reason if dm else None,
                       "no_compact_reason": nc.reason if nc else None, "created_at_ms": m.created_at_ms})
        t = totals[tier]
        t["blocks"] += 1
        t["bytes"] += m.stats.bytes
        t["samples"] += m.stats.samples
        if m.ulid in live:
            t["live_blocks"] += 1
            t["live_bytes"] += m.stats.bytes
            t["live_samples"] += m.stats.samples
    doc = {"tenant": tenant, "tenants": tenants, "now_ms": int(time.time() * 1000),
           "deletion_delay_ms": engine.deletion_delay_ms, "blocks": blocks, "totals": totals,
           "gaps": uncovered([(m.min_time, m.max_time) for m in live_metas]),
           "unfinished_uploads": list(listing.unfinished), "retention": None}
    if retention_info is not None:
        try:
            doc["retention"] = retention_info(tenant)
        except Exception as e:  # the page still shows the blocks
            doc["retention"] = {"error": f"{type(e).__name__}: {e}"}
    return doc


UI_PAGE = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Strata bucket</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body{font:14px system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
 header{background:#1d2330;color:#fff;padding:10px 18px;display:flex;gap:18px;align-items:center}
 header a{color:#9cc3ff} main{padding:14px 18px} h2{font-size:15px;margin:18px 0 6px}
 svg{background:#fff;border:1px solid #d5d9e0} .lane{font-weight:600;fill:#333}
 rect.b{stroke:#fff;stroke-width:.5;cursor:pointer} rect.b:hover{stroke:#000;stroke-width:1.5}
 .live{fill:#2e9d5b}.marked{fill:#e0663b}.no-compact{fill:#8a4fd1}.superseded{fill:#9aa3ad}.gap{fill:#d7263d;opacity:.35}
 table{border-collapse:collapse;background:#fff} td,th{border:1px solid #d5d9e0;padding:3px 8px;text-align:right}
 th{background:#eef0f4} td.l,th.l{text-align:left} #details{background:#fff;border:1px solid #d5d9e0;padding:8px;
 white-space:pre-wrap;font-family:monospace;min-height:3em} .legend span{display:inline-block;width:12px;height:12px;
 margin:0 4px 0 12px;vertical-align:middle} #errors{color:#b00020}
</style></head>
<body>
<header><b>Strata bucket</b>
 <label>tenant <select id="tenant"></select></label>
 <a href="/metrics">/metrics</a> <a id="labels" href="/api/v1/labels">/api/v1/labels</a>
 <a id="bucketjson" href="/api/v1/bucket">/api/v1/bucket</a> <span>SQL: POST /api/v1/sql</span></header>
<main>
<div id="errors"></div>
<div class="legend">state:<span class="live" style="background:#2e9d5b"></span>live<span style="background:#e0663b"></span>marked for deletion
 <span style="background:#8a4fd1"></span>no-compact<span style="background:#9aa3ad"></span>superseded (not read)
 <span style="background:#d7263d;opacity:.35"></span>no tier covers</div>
<h2>Blocks over time</h2><div id="timeline"></div>
<h2>Block</h2><div id="details">click a block</div>
<h2>Totals per tier</h2><div id="totals"></div>
<h2>Retention</h2><div id="retention"></div>
</main>
<script>
"use strict";
const TIERS = ["raw", "5m", "1h", "1d"];
const $ = (id) => document.getElementById(id);
const fmtT = (ms) => new Date(ms).toISOString().replace(".000Z", "Z");
const fmtB = (n) => { const u = ["B","KiB","MiB","GiB","TiB"]; let i = 0; while (n >= 1024 && i < 4) { n /= 1024; i++; } return n.toFixed(i ? 1 : 0) + " " + u[i]; };
const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({"&":"&amp;","<":"&lt;",">":"&gt;","\\"":"&quot;"}[c]));
window.addEventListener("error", (e) => { $("errors").textContent += "error: " + e.message + "\\n"; });
function details(b) {
  return ["ulid      " + b.ulid, "tier      " + b.tier + "  (level " + b.level + ", format v" + b.version + ")",
    "range     " + fmtT(b.min_time) + " .. " + fmtT(b.max_time), "state     " + b.state,
    "series    " + b.series.toLocaleString(), "samples   " + b.samples.toLocaleString(), "bytes     " + fmtB(b.bytes),
    "sources   " + b.sources.length + (b.sources.length <= 8 ? "  " + b.sources.join(" ") : ""),
    "parents   " + (b.parents.join(" ") || "-"),
    "marked    " + (b.deletion_time_ms ? fmtT(b.deletion_time_ms) + "  " + b.mark_reason : "-"),
    "no-compact " + (b.no_compact_reason || "-")].join("\\n");
}
function draw(doc) {
  const blocks = doc.blocks;
  const W = Math.max(800, document.body.clientWidth - 60), LW = 50, LH = 34, H = LH * (TIERS.length + 1) + 30;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", W); svg.setAttribute("height", H); svg.setAttribute("id", "svg");
  $("timeline").replaceChildren(svg);
  if (!blocks.length) { $("timeline").insertAdjacentHTML("beforeend", "<p>no blocks</p>"); return; }
  const lo = Math.min(...blocks.map((b) => b.min_time)), hi = Math.max(...blocks.map((b) => b.max_time));
  const x = (t) => LW + (W - LW - 10) * (t - lo) / Math.max(hi - lo, 1);
  const lanes = TIERS.concat(["gaps"]);
  lanes.forEach((name, i) => {
    const t = document.createElementNS(ns, "text");
    t.setAttribute("x", 4); t.setAttribute("y", 6 + i * LH + LH / 2); t.setAttribute("class", "lane");
    t.textContent = name; svg.appendChild(t);
  });
  // Inside a lane, live blocks take the upper row and blocks not read (marked, no-compact,
  // superseded) the lower one, so a day block and the 2h blocks it replaced are both visible.
  const rect = (x0, x1, lane, cls, row) => {
    const r = document.createElementNS(ns, "rect");
    const top = 6 + lane * LH, h = LH - 8;
    r.setAttribute("x", x0); r.setAttribute("width", Math.max(1.5, x1 - x0));
    r.setAttribute("y", row === 1 ? top + h * 0.55 : top);
    r.setAttribute("height", row === undefined ? h : h * (row === 0 ? 0.5 : 0.45));
    r.setAttribute("class", cls); svg.appendChild(r); return r;
  };
  for (const b of blocks) {
    const r = rect(x(b.min_time), x(b.max_time), TIERS.indexOf(b.tier), "b " + b.state, b.live ? 0 : 1);
    r.dataset.ulid = b.ulid; r.dataset.lane = b.tier; r.dataset.state = b.state;
    const title = document.createElementNS(ns, "title"); title.textContent = details(b); r.appendChild(title);
    r.addEventListener("click", () => { $("details").textContent = details(b); });
  }
  for (const [a, b] of doc.gaps) { const r = rect(x(a), x(b), TIERS.length, "gap"); r.dataset.gap = a + "-" + b; }
  const axis = document.createElementNS(ns, "text");
  axis.setAttribute("x", LW); axis.setAttribute("y", H - 6); axis.textContent = fmtT(lo) + "  ..  " + fmtT(hi);
  svg.appendChild(axis);
}
function totals(doc) {
  let h = "<table id='totals-table'><tr><th class=l>tier</th><th>blocks</th><th>live</th><th>bytes</th><th>live bytes</th><th>samples/windows (live)</th></tr>";
  for (const t of TIERS) { const v = doc.totals[t];
    h += `<tr data-tier="${t}"><td class=l>${t}</td><td>${v.blocks}</td><td>${v.live_blocks}</td><td>${fmtB(v.bytes)}</td><td>${fmtB(v.live_bytes)}</td><td>${v.live_samples.toLocaleString()}</td></tr>`; }
  $("totals").innerHTML = h + "</table>" + (doc.gaps.length ? `<p>${doc.gaps.length} range(s) no live tier covers: ` +
    doc.gaps.map(([a, b]) => fmtT(a) + " .. " + fmtT(b)).join(", ") + "</p>" : "<p>no gaps</p>");
}
function retention(doc) {
  const r = doc.retention;
  if (!r) { $("retention").textContent = "not available (the gateway was started without the retention view)"; return; }
  if (r.error) { $("retention").textContent = "could not read: " + r.error; return; }
  let h = "<pre id='policy'>" + esc(JSON.stringify(r.policy, null, 1)) + "</pre>";
  const ds = (r.plan && r.plan.decisions) || [];
  h += `<p>retention plan now: ${ds.length} decision(s)</p><table id='plan'><tr><th class=l>action</th><th class=l>block</th><th class=l>tier</th><th class=l>why</th></tr>`;
  for (const d of ds) h += `<tr><td class=l>${esc(d.action)}</td><td class=l>${esc(d.ulid || d.block || "")}</td><td class=l>${esc(d.resolution || d.tier || "")}</td><td class=l>${esc(d.reason || "")}</td></tr>`;
  $("retention").innerHTML = h + "</table>";
}
async function load(tenant) {
  const q = tenant ? "?tenant=" + encodeURIComponent(tenant) : "";
  const resp = await fetch("/api/v1/bucket" + q);
  const body = await resp.json();
  if (body.status !== "success") { $("errors").textContent = body.error; return; }
  const doc = body.data;
  const sel = $("tenant");
  sel.replaceChildren(...doc.tenants.map((t) => { const o = document.createElement("option"); o.textContent = t; o.selected = t === doc.tenant; return o; }));
  $("bucketjson").href = "/api/v1/bucket" + q;
  draw(doc); totals(doc); retention(doc);
  document.body.dataset.loaded = doc.tenant;
}
$("tenant").addEventListener("change", (e) => load(e.target.value));
load(new URLSearchParams(location.search).get("tenant")).catch((e) => { $("errors").textContent = "error: " + e; });
</script></body></html>
"""
