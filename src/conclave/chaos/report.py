"""report.html: one self-contained page for a chaos run.

Theory of operation. Plain HTML and inline SVG, no script of its own and nothing fetched: the
verdicts and counts, the faults as a table and as bands behind every chart (throughput per
second by outcome, latency median and max, and a lane per key with each operation as a line
coloured by its outcome), and the checker's own viewer (``conclave.verify.viewer``) for the
checked keys, embedded as an iframe's ``srcdoc`` so the page still stands alone.
"""

from __future__ import annotations

import html
from typing import Any

from conclave.chaos.analysis import US, Op

COLORS = {"ok": "#2a9d4b", "fail": "#d98c1a", "info": "#8a8a8a"}


def _bands(faults: list[dict[str, Any]], x: Any, top: float, height: float) -> str:
    out = []
    for f in faults:
        if f.get("skipped"):
            continue
        a, b = x(f["start"]), x(f["end"] if f["end"] is not None else f["start"])
        out.append(f'<rect x="{a:.1f}" y="{top}" width="{max(1.0, b - a):.1f}" height="{height}" '
                   f'fill="#e63946" opacity="0.12"><title>{html.escape(f["kind"])}: '
                   f'{html.escape(f["detail"])}</title></rect>')
    return "".join(out)


def _chart(rows: list[dict[str, float]], faults: list[dict[str, Any]], total_s: float, fields: list[str],
           title: str, unit: str) -> str:
    w, h, pad = 900, 180, 40
    peak = max([max(r[f] for f in fields) for r in rows] + [1])

    def x(t: float) -> float:
        return pad + (w - 2 * pad) * t / max(total_s, 1)

    def y(v: float) -> float:
        return h - 20 - (h - 40) * v / peak

    lines = []
    palette = {"ok": COLORS["ok"], "fail": COLORS["fail"], "info": COLORS["info"], "p50": "#1d3557", "max": "#e76f51"}
    for f in fields:
        pts = " ".join(f"{x(r['t'] + 0.5):.1f},{y(r[f]):.1f}" for r in rows)
        lines.append(f'<polyline fill="none" stroke="{palette[f]}" stroke-width="1.5" points="{pts}">'
                     f'<title>{f}</title></polyline>')
    legend = " ".join(f'<tspan fill="{palette[f]}">■ {f}</tspan>' for f in fields)
    return (f'<h3>{html.escape(title)}</h3><svg width="{w}" height="{h}" xmlns="http://www.w3.org/2000/svg">'
            f'{_bands(faults, x, 10, h - 30)}'
            f'<line x1="{pad}" y1="{h - 20}" x2="{w - pad}" y2="{h - 20}" stroke="#999"/>'
            f'<text x="{pad}" y="{h - 4}" font-size="11">0 s</text>'
            f'<text x="{w - pad - 30}" y="{h - 4}" font-size="11">{total_s:.0f} s</text>'
            f'<text x="2" y="14" font-size="11">{peak:.0f} {unit}</text>'
            f'<text x="{pad + 60}" y="14" font-size="11">{legend}</text>{"".join(lines)}</svg>')


def _lanes(ops: list[Op], faults: list[dict[str, Any]], total_s: float, keys: list[str]) -> str:
    w, lane, pad = 900, 14, 60
    h = lane * len(keys) + 30
    index = {k: i for i, k in enumerate(keys)}

    def x(t: float) -> float:
        return pad + (w - pad - 10) * t / max(total_s, 1)

    parts = [_bands(faults, x, 0, h - 20)]
    for k, i in index.items():
        parts.append(f'<text x="2" y="{i * lane + 11}" font-size="10">{html.escape(k)}</text>')
    for o in ops:
        if o.key not in index:
            continue
        yy = index[o.key] * lane + 7
        end = (o.ret if o.ret is not None else total_s * US) / US
        parts.append(f'<line x1="{x(o.call / US):.1f}" y1="{yy}" x2="{max(x(end), x(o.call / US) + 1):.1f}" '
                     f'y2="{yy}" stroke="{COLORS[o.status]}" stroke-width="3"><title>{html.escape(o.f)} '
                     f'{html.escape(str(o.value))} -> {o.status} {html.escape(str(o.out))}</title></line>')
    return (f'<h3>Operations per key (grey: indeterminate, orange: failed cas)</h3>'
            f'<svg width="{w}" height="{h}" xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>')


def _num(v: float | None, unit: str, digits: int = 1) -> str:
    return "" if v is None else f"{v:.{digits}f}{unit}"


def render(summary: dict[str, Any], ops: list[Op], rows: list[dict[str, float]], viewer_html: str | None) -> str:
    faults = summary["faults"]
    total = float(summary["duration_s"])
    keys = sorted({o.key for o in ops}, key=lambda k: (len(k), k))
    verdict = summary["verdict"]
    color = {"valid": "#2a9d4b", "violation": "#e63946"}.get(verdict, "#d98c1a")
    fault_rows = "".join(
        f"<tr><td>{f['start']:.1f}</td><td>{_num(f['end'], '')}</td>"
        f"<td>{html.escape(f['kind'])}</td><td>{html.escape(f['detail'])}</td>"
        f"<td>{_num(f.get('recovery_s'), ' s', 2)}</td></tr>" for f in faults)
    facts = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
                    for k, v in summary.items() if k not in ("faults", "lost"))
    viewer = ""
    if viewer_html:
        viewer = ('<h2>The checker\'s timeline per key</h2>'
                  '<iframe style="width:100%;height:900px;border:1px solid #ccc" '
                  f'srcdoc="{html.escape(viewer_html, quote=True)}"></iframe>')
    title = f"conclave chaos {html.escape(str(summary['seed']))}"
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:20px;max-width:1000px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ddd;padding:2px 8px;text-align:left;font-size:13px}}</style></head><body>
<h1>conclave chaos: <span style="color:{color}">{html.escape(verdict)}</span></h1>
<p>Rerun: <code>{html.escape(summary['rerun'])}</code></p>
<table>{facts}</table>
<h2>Faults</h2><table><tr><th>start s</th><th>healed s</th><th>kind</th><th>what</th><th>first write after</th></tr>
{fault_rows}</table>
{_chart(rows, faults, total, ["ok", "fail", "info"], "Operations completed per second", "ops/s")}
{_chart(rows, faults, total, ["p50", "max"], "Latency of acknowledged operations", "ms")}
{_lanes(ops, faults, total, keys)}
{viewer}
</body></html>"""
