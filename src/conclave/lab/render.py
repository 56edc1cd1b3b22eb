"""How a lab run is shown: terminal text with an ASCII timeline, and one self-contained HTML page.

Theory of operation. Both views draw the same ``Outcome``: client operations per process (an
interval from call to return, open-ended when the outcome is unknown), replica states over time
(one lane per node, a segment per state), network and process events as bands, and the
checker's verdict with the operations it could not place (``failing_ops``) highlighted. The
page is static HTML with inline CSS and inline SVG drawn here in Python: no script, no external
reference, so it opens anywhere without a network. Pure: returns strings, writes nothing.
"""

from __future__ import annotations

import html
import json
import textwrap
from typing import Any

from conclave.lab.core import OpRecord, Outcome

WIDTH = 64  # columns of the ASCII timeline


def failing_ops(out: Outcome) -> set[int]:
    """Ids of the recorded operations the checker could not place (blocked, or the deadline)."""
    if out.result is None:
        return set()
    lines: set[int] = set()
    for p in out.result.failing:
        for b in p.blocked:
            lines.add(b.op.call_line)
        if p.deadline is not None:
            lines.add(p.deadline.call_line)
    return {o.id for o in out.ops if o.call_line in lines}


def op_label(o: OpRecord) -> str:
    value = "" if o.value is None else _show(o.value)
    text = f"{o.f}({value})" if o.key is None else f"{o.f} {o.key}({value})"
    if o.status == "ok" and o.output is not None:
        text += f"→{_show(o.output)}"
    elif o.status == "ok" and o.f in ("read", "get"):
        text += "→nil"
    elif o.status == "fail":
        text += " ✗"
    elif o.status in ("info", "open"):
        text += " ?"
    return text


def short_label(o: OpRecord) -> str:
    """The label drawn on a bar: w:1, r:1, cas:nil→2, with ✗ for failed and ? for unknown."""
    head = {"write": "w", "read": "r", "put": "w", "get": "r"}.get(o.f, o.f)
    observes = o.f in ("read", "get", "acquire")
    shown = o.output if observes else o.value
    text = f"{head}:{_show(shown)}" if o.status == "ok" or not observes else head
    return text + {"fail": "✗", "info": "?", "open": "?"}.get(o.status, "")


def _show(v: Any) -> str:
    if v is None:
        return "nil"
    if isinstance(v, str):
        return v
    return json.dumps(v, separators=(",", ":"))


def processes(out: Outcome) -> list[str]:
    seen: list[str] = []
    for o in out.ops:
        if o.process not in seen:
            seen.append(o.process)
    return seen


# -- terminal ------------------------------------------------------------------------------


def render_text(out: Outcome, timeline: bool = True) -> str:
    mark = "as expected" if out.matches else "UNEXPECTED"
    lines = [f"== {out.scenario} ({out.variant}), seed {out.seed}", ""]
    lines += textwrap.wrap(out.story, 100)
    lines += ["", f"verdict: {out.verdict}   expected: {out.expected}   [{mark}]",
              "counts: " + ", ".join(f"{k} {v}" for k, v in out.counts.items())]
    if out.sweep:
        lines.append("")
        keys = list(out.sweep[0])
        lines.append("  ".join(f"{k:>14}" for k in keys))
        for row in out.sweep:
            lines.append("  ".join(f"{row[k]:>14.4g}" for k in keys))
    if timeline:
        lines += ["", *ascii_timeline(out)]
    return "\n".join(lines)


def ascii_timeline(out: Outcome) -> list[str]:
    end = max(out.end, 1)
    scale = end / WIDTH

    def col(t: float) -> int:
        return min(WIDTH - 1, max(0, int(t / scale)))

    bad = failing_ops(out)
    rows = [f"timeline 0..{end} ms, one column = {scale:g} ms; "
            "ops: letter = call, '=' in flight, '|' return, '?' unknown, '!' where the checker fails"]
    for p in processes(out):
        row = [" "] * WIDTH
        for o in (o for o in out.ops if o.process == p):
            a = col(o.call)
            b = col(o.ret) if o.ret is not None else WIDTH - 1
            fill = "!" if o.id in bad else ("?" if o.ret is None else "=")
            for k in range(a, b + 1):
                row[k] = fill
            if o.ret is not None:
                row[b] = "|" if o.id not in bad else "!"
            row[a] = o.f[0].upper() if o.status != "fail" else "x"
        rows.append(f"  {p[:12]:<12} {''.join(row)}")
    for lane in out.lanes:
        states = out.trace.states.get(lane, [])
        row = ["·"] * WIDTH
        for t, _ in states[1:]:
            row[col(t)] = "^"
        for band in out.trace.bands:
            if lane in band.nodes and band.kind in ("crash", "pause"):
                for k in range(col(band.start), col(band.end if band.end is not None else end) + 1):
                    row[k] = "X" if band.kind == "crash" else "z"
        final = states[-1][1] if states else ""
        rows.append(f"  {lane[:12]:<12} {''.join(row)} {final[:40]}")
    for band in out.trace.bands:
        if band.kind in ("crash", "pause") and set(band.nodes) & set(out.lanes):
            continue
        row = [" "] * WIDTH
        for k in range(col(band.start), col(band.end if band.end is not None else end) + 1):
            row[k] = "#"
        rows.append(f"  {band.kind[:12]:<12} {''.join(row)} {band.label[:40]}")
    return rows


# -- HTML ----------------------------------------------------------------------------------

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:22px 0 6px}
.story{font-size:15px;max-width:900px}
.verdict{display:inline-block;padding:6px 12px;border-radius:6px;font-weight:600;margin:8px 0}
.good{background:#e3f4e1;color:#185c14}.bad{background:#fbe3e1;color:#8a1c12}
.miss{outline:3px solid #d08a00}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
pre{background:#f6f6f6;padding:10px;overflow-x:auto;font-size:12px}
svg text{font:11px system-ui,sans-serif}
.scroll{overflow-x:auto}
.legend span{display:inline-block;margin-right:14px}
.sw{display:inline-block;width:12px;height:10px;margin-right:4px;vertical-align:middle}
"""

_COLORS = {"ok": "#8fc98a", "fail": "#c8c8c8", "info": "#f2c37a", "open": "#f2c37a"}
_BANDS = {"partition": "#5b8def", "crash": "#d9534f", "pause": "#9b59b6", "delay": "#e0a030",
          "lease": "#2aa198", "doubt": "#c2185b", "other": "#888888"}


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def timeline_svg(out: Outcome) -> str:
    label_w, lane_h = 120, 26
    end = max(out.end, 1)
    per_lane = max([sum(1 for o in out.ops if o.process == p) for p in processes(out)] or [0])
    plot_w = min(2400, max(960, 90 * per_lane))  # room for a short label by each bar

    def x(t: float) -> float:
        return label_w + plot_w * min(max(t, 0), end) / end

    procs = processes(out)
    bands = out.trace.bands
    rows = len(procs) + len(out.lanes) + len(bands)
    height = 30 + (rows + 2) * lane_h
    bad = failing_ops(out)
    parts = [f'<svg width="{label_w + plot_w + 20}" height="{height}" '
             f'role="img" aria-label="timeline">']
    top = 24
    plot_bottom = top + rows * lane_h + 2 * lane_h
    # time axis
    for k in range(11):
        t = end * k / 10
        parts.append(f'<line x1="{x(t):.1f}" y1="{top - 6}" x2="{x(t):.1f}" y2="{plot_bottom}" stroke="#eee"/>')
        parts.append(f'<text x="{x(t):.1f}" y="{top - 10}" text-anchor="middle" fill="#666">{t:.0f} ms</text>')
    # bands shaded over the whole plot, plus a lane each
    for b in bands:
        color = _BANDS.get(b.kind, "#888")
        x0, x1 = x(b.start), x(b.end if b.end is not None else end)
        parts.append(f'<rect x="{x0:.1f}" y="{top}" width="{max(x1 - x0, 2):.1f}" height="{plot_bottom - top}" '
                     f'fill="{color}" opacity="0.07"/>')
    y = top
    parts.append(f'<text x="4" y="{y + 14}" font-weight="bold">clients</text>')
    y += lane_h
    for p in procs:
        parts.append(f'<text x="4" y="{y + 16}">{_e(p)}</text>')
        mine = [o for o in out.ops if o.process == p]
        for n, o in enumerate(mine):
            x0 = x(o.call)
            x1 = x(o.ret) if o.ret is not None else x(end)
            w = max(x1 - x0, 4)
            label = short_label(o)
            next_x = x(mine[n + 1].call) if n + 1 < len(mine) else label_w + plot_w + 20
            if len(label) * 6 + 4 <= w:
                text = _fit(label, x0, w, y)
            else:  # beside the bar, in the room before the next call
                text = _fit(label, x0 + w + 1, next_x - x0 - w - 2, y)
            fill = _COLORS.get(o.status, "#ccc")
            stroke = ' stroke="#c0241a" stroke-width="3"' if o.id in bad else ' stroke="#555" stroke-width="0.6"'
            dash = ' stroke-dasharray="4 3"' if o.ret is None else ""
            tip = f"{p}: {op_label(o)} [{o.call}, {o.ret if o.ret is not None else '…'}] ms ({o.status})"
            parts.append(f'<g><title>{_e(tip)}</title><rect x="{x0:.1f}" y="{y + 3}" width="{w:.1f}" '
                         f'height="{lane_h - 6}" rx="3" fill="{fill}"{stroke}{dash}/>'
                         f'{text}</g>')
        y += lane_h
    parts.append(f'<text x="4" y="{y + 14}" font-weight="bold">replicas</text>')
    y += lane_h
    for lane in out.lanes:
        parts.append(f'<text x="4" y="{y + 16}">{_e(lane)}</text>')
        states = out.trace.states.get(lane, [])
        for k, (t, text) in enumerate(states):
            t1 = states[k + 1][0] if k + 1 < len(states) else end
            x0, x1 = x(t), x(t1)
            fill = "#fde2e0" if text.startswith("down") or "crashed" in text else (
                "#dcecff" if text.startswith("leader") else "#f3f3f3")
            parts.append(f'<g><title>{_e(f"{lane} from {t} ms: {text}")}</title>'
                         f'<rect x="{x0:.1f}" y="{y + 3}" width="{max(x1 - x0, 1):.1f}" height="{lane_h - 6}" '
                         f'fill="{fill}" stroke="#bbb" stroke-width="0.5"/>'
                         f'{_fit(text, x0, x1 - x0, y)}</g>')
        for b in bands:
            if lane in b.nodes and b.kind in ("crash", "pause"):
                x0, x1 = x(b.start), x(b.end if b.end is not None else end)
                parts.append(f'<rect x="{x0:.1f}" y="{y + 1}" width="{max(x1 - x0, 2):.1f}" height="{lane_h - 2}" '
                             f'fill="{_BANDS[b.kind]}" opacity="0.35"/>')
        y += lane_h
    for b in bands:
        color = _BANDS.get(b.kind, "#888")
        x0, x1 = x(b.start), x(b.end if b.end is not None else end)
        parts.append(f'<text x="4" y="{y + 16}">{_e(b.kind)}</text>')
        parts.append(f'<g><title>{_e(b.label)} [{b.start}, {b.end if b.end is not None else "end"}] ms</title>'
                     f'<rect x="{x0:.1f}" y="{y + 4}" width="{max(x1 - x0, 2):.1f}" height="{lane_h - 8}" '
                     f'fill="{color}" opacity="0.55"/>'
                     f'<text x="{x0 + 3:.1f}" y="{y + 17}">{_e(b.label)}</text></g>')
        y += lane_h
    parts.append("</svg>")
    return "".join(parts)


def _fit(label: str, x0: float, width: float, y: float) -> str:
    """The label inside its bar, cut to what fits (about 6 px a character); the tooltip has it whole."""
    room = int((width - 4) / 6)
    if room < 3:
        return ""
    text = label if len(label) <= room else label[:room - 1] + "…"
    return f'<text x="{x0 + 2:.1f}" y="{y + 17}">{_e(text)}</text>'


def sweep_svg(rows: list[dict[str, float]], xkey: str, ykeys: list[str], title: str) -> str:
    w, h, pad = 300, 200, 40
    xs = [r[xkey] for r in rows]
    lo, hi = min(xs), max(xs) or 1
    out = []
    for ykey in ykeys:
        ys = [r[ykey] for r in rows]
        ymax = max(ys) * 1.1 or 1

        def px(v: float) -> float:
            return pad + (w - pad - 10) * ((v - lo) / ((hi - lo) or 1))

        def py(v: float, ymax: float = ymax) -> float:
            return h - pad + 10 - (h - pad - 10) * v / ymax
        pts = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in zip(xs, ys, strict=True))
        s = [f'<svg width="{w}" height="{h + 10}" role="img" '
             f'aria-label="{_e(ykey)}">',
             f'<text x="{w / 2}" y="14" text-anchor="middle" font-weight="bold">{_e(ykey)}</text>',
             f'<line x1="{pad}" y1="{h - pad + 10}" x2="{w - 10}" y2="{h - pad + 10}" stroke="#333"/>',
             f'<line x1="{pad}" y1="20" x2="{pad}" y2="{h - pad + 10}" stroke="#333"/>',
             f'<polyline points="{pts}" fill="none" stroke="#2b6cb0" stroke-width="2"/>']
        for a, b in zip(xs, ys, strict=True):
            s.append(f'<circle cx="{px(a):.1f}" cy="{py(b):.1f}" r="3" fill="#2b6cb0"><title>{_e(xkey)} {a:g}: '
                     f'{_e(ykey)} {b:.3g}</title></circle>')
            s.append(f'<text x="{px(a):.1f}" y="{h - pad + 24}" text-anchor="middle">{a:g}</text>')
        s.append(f'<text x="{pad - 4}" y="24" text-anchor="end">{ymax / 1.1:.3g}</text>')
        s.append(f'<text x="{w / 2}" y="{h + 6}" text-anchor="middle" fill="#666">{_e(xkey)}</text>')
        s.append("</svg>")
        out.append("".join(s))
    return f'<figure><figcaption>{_e(title)}</figcaption>{"".join(out)}</figure>'


def render_html(out: Outcome, concept: str = "", command: str = "") -> str:
    good = out.verdict in ("linearizable", "safe", "causal order kept", "completed", "total order kept")
    cls = ("good" if good else "bad") + ("" if out.matches else " miss")
    counts = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in out.counts.items())
    notes = "".join(f"<li>{t} ms: {_e(n)}</li>" for t, n in out.trace.notes)
    bad = failing_ops(out)
    failing = ""
    if bad:
        items = "".join(f"<li><b>{_e(o.process)}</b>: {_e(op_label(o))} [{o.call}, "
                        f"{o.ret if o.ret is not None else '…'}] ms</li>" for o in out.ops if o.id in bad)
        failing = f"<h2>Where the checker fails</h2><p>Outlined in red in the timeline:</p><ul>{items}</ul>"
    sweep = ""
    if out.sweep:
        xkey, ykeys, title = out.sweep_axes[0], out.sweep_axes[1].split(","), out.sweep_axes[2]
        keys = list(out.sweep[0])
        head = "".join(f"<th>{_e(k)}</th>" for k in keys)
        body = "".join("<tr>" + "".join(f"<td>{r[k]:.4g}</td>" for k in keys) + "</tr>" for r in out.sweep)
        sweep = (f"<h2>Sweep</h2>{sweep_svg(out.sweep, xkey, ykeys, title)}"
                 f"<table><tr>{head}</tr>{body}</table>")
    legend = "".join(f'<span><i class="sw" style="background:{c}"></i>{_e(k)}</span>'
                     for k, c in (("ok", _COLORS["ok"]), ("failed", _COLORS["fail"]), ("unknown", _COLORS["info"])))
    legend += "".join(f'<span><i class="sw" style="background:{c};opacity:.6"></i>{_e(k)}</span>'
                      for k, c in _BANDS.items())
    cmd = f"<p>Run it: <code>{_e(command)}</code></p>" if command else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{_e(f"conclave lab: {out.scenario} ({out.variant})")}</title>
<style>{CSS}</style></head><body>
<h1>{_e(out.scenario)} <small>({_e(out.variant)}, seed {out.seed})</small></h1>
<p>{_e(concept)}</p>{cmd}
<p class="story">{_e(out.story)}</p>
<div class="verdict {cls}">verdict: {_e(out.verdict)} — expected: {_e(out.expected)}</div>
<h2>Counts</h2><table>{counts}</table>
{sweep}
<h2>Timeline</h2><p class="legend">{legend}</p>
<div class="scroll">{timeline_svg(out)}</div>
{failing}
<h2>Explanation</h2><pre>{_e(out.explanation)}</pre>
{f"<h2>Events</h2><ul>{notes}</ul>" if notes else ""}
<details><summary>History (JSON lines, `conclave check --model {_e(out.model or "register")}`)</summary>
<pre>{_e(out.history)}</pre></details>
</body></html>
"""


def render_index(rows: list[tuple[Outcome, str]]) -> str:
    body = "".join(
        f'<tr class="{"" if o.matches else "bad"}"><td><a href="{_e(href)}">{_e(o.scenario)}</a></td>'
        f"<td>{_e(o.variant)}</td><td>{_e(o.verdict)}</td><td>{_e(o.expected)}</td>"
        f"<td>{o.counts.get('operations', 0)}</td><td>{o.counts.get('lost writes', 0)}</td></tr>"
        for o, href in rows)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>conclave lab</title><style>{CSS}</style></head><body>
<h1>conclave lab</h1><p>Every scenario and variant, judged by the linearizability checker.</p>
<table><tr><th>scenario</th><th>variant</th><th>verdict</th><th>expected</th><th>ops</th><th>lost writes</th></tr>
{body}</table></body></html>
"""
