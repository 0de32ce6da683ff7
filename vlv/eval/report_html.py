"""Building blocks of a self-contained HTML report: escaped tables, images inlined as base64 PNG, plots.

Self-contained means one file that opens anywhere (mail it, attach it to MLflow): no external CSS, scripts or
image links. Every piece of text is HTML-escaped here, so step code can pass captions and paths as they are.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from typing import Any, Sequence

_CSS = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; line-height: 1.4; padding: 0 1em; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.8em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.caveat { background: #fff3cd; border: 2px solid #d39e00; padding: 0.8em 1em; font-size: 1.05em; margin: 1em 0; }
.caveat strong { color: #8a5a00; } .muted { color: #777; font-size: 0.9em; }
img { max-width: 100%; border: 1px solid #eee; } .thumb { width: 96px; height: 96px; }
"""


@dataclass(frozen=True)
class Cell:
    """A table cell: text (escaped) or trusted HTML (`raw`), optionally right-aligned as a number."""

    text: str = ""
    raw: str = ""
    numeric: bool = False

    def render(self, tag: str) -> str:
        body = self.raw if self.raw else html.escape(self.text)
        css = ' class="num"' if self.numeric else ""
        return f"<{tag}{css}>{body}</{tag}>"


def esc(text: Any) -> str:
    return html.escape(str(text))


def table(header: Sequence[str], rows: Sequence[Sequence[Cell | str | float | int | None]]) -> str:
    def cell(value: Any) -> Cell:
        if isinstance(value, Cell):
            return value
        if value is None:
            return Cell("—")
        if isinstance(value, float):
            return Cell(f"{value:.2f}", numeric=True)
        if isinstance(value, int):
            return Cell(str(value), numeric=True)
        return Cell(str(value))

    head = "".join(Cell(h).render("th") for h in header)
    body = "".join("<tr>" + "".join(cell(v).render("td") for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def png_img(png: bytes, alt: str, css_class: str = "") -> str:
    data = base64.b64encode(png).decode("ascii")
    css = f' class="{css_class}"' if css_class else ""
    return f'<img{css} alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def array_png(array: Any) -> bytes:
    """uint8 (H, W, 3) array -> PNG bytes."""
    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def line_plot_png(series: dict[str, list[tuple[int, float]]], *, title: str, xlabel: str, ylabel: str) -> bytes:
    """One axes, one line per named (step, value) series (matplotlib's object API: no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 3.6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for name, points in series.items():
        axes.plot([p[0] for p in points], [p[1] for p in points], marker="o" if len(points) < 30 else None,
                  markersize=3, label=name)
    axes.set_title(title, fontsize=10)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    if len(series) > 1:
        axes.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def bar_chart_png(labels: list[str], values: list[float], *, title: str) -> bytes:
    """Horizontal bars, first label on top (a funnel reads top to bottom)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 0.45 * len(labels) + 1.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    positions = list(range(len(labels)))[::-1]
    axes.barh(positions, values, color="#4C72B0")
    axes.set_yticks(positions, labels, fontsize=8)
    for y, value in zip(positions, values):
        axes.text(value, y, f" {value:,.0f}", va="center", fontsize=8)
    axes.set_title(title, fontsize=10)
    axes.set_xlim(0, max(values + [1.0]) * 1.18)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def page(title: str, sections: Sequence[str]) -> str:
    body = "\n".join(sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{_CSS}</style></head><body>\n{body}\n</body></html>\n")
