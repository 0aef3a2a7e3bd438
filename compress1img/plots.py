"""Line charts as PNG, drawn with Pillow: the healing curve of report.md.

Pillow is already a dependency and one chart of a few percentage curves against training
steps needs axes, ticks, a legend and labels, not a plotting library.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .outputs import atomic_write

COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd")
WIDTH, HEIGHT = 760, 460
LEFT, RIGHT, TOP, BOTTOM = 64, 24, 64, 56  # margins around the plot area, in pixels


@dataclass
class Series:
    label: str
    points: list[tuple[float, float]]  # (x, y), y in the chart's y range


@dataclass
class Chart:
    title: str
    x_label: str
    y_label: str
    series: list[Series]
    y_range: tuple[float, float] = (0.0, 100.0)
    references: list[tuple[str, float]] = field(default_factory=list)  # labelled horizontal dashed lines
    marks: list[tuple[float, str]] = field(default_factory=list)  # labelled vertical dotted lines (stage starts)


def nice_ticks(low: float, high: float, most: int = 8) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) covering [low, high], at most `most` of them."""
    if high <= low:
        return [low]
    raw = (high - low) / max(most - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def _tick_text(value: float) -> str:
    return f"{value:,.0f}" if value == int(value) else f"{value:g}"


def save_line_chart(chart: Chart, path: str | Path) -> None:
    """Draw `chart` and write it as a PNG at `path`, atomically."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    # Pillow's built-in font draws spaces too narrow below 13 px.
    font, small = ImageFont.load_default(size=14), ImageFont.load_default(size=13)
    x_max = max((x for s in chart.series for x, _ in s.points), default=1.0) or 1.0
    (y_low, y_high), (left, top, right, bottom) = chart.y_range, (LEFT, TOP, WIDTH - RIGHT, HEIGHT - BOTTOM)

    def px(x: float, y: float) -> tuple[float, float]:
        return (left + (right - left) * x / x_max,
                bottom - (bottom - top) * (min(max(y, y_low), y_high) - y_low) / (y_high - y_low))

    # -- title, grid, axes, ticks, axis labels -------------------------------------------------------------------
    draw.text((WIDTH / 2, 8), chart.title, fill="black", font=font, anchor="mt")
    for y in nice_ticks(y_low, y_high, 6):
        _, py = px(0, y)
        draw.line([(left, py), (right, py)], fill="#e6e6e6")
        draw.text((left - 6, py), _tick_text(y), fill="black", font=small, anchor="rm")
    for x in nice_ticks(0, x_max):
        qx, _ = px(x, y_low)
        draw.line([(qx, bottom), (qx, bottom + 4)], fill="black")
        draw.text((qx, bottom + 6), _tick_text(x), fill="black", font=small, anchor="mt")
    draw.rectangle([left, top, right, bottom], outline="black")
    draw.text(((left + right) / 2, HEIGHT - 8), chart.x_label, fill="black", font=font, anchor="mb")
    label = Image.new("RGB", (int(draw.textlength(chart.y_label, font=font)) + 4, 16), "white")
    ImageDraw.Draw(label).text((2, 1), chart.y_label, fill="black", font=font)
    rotated = label.rotate(90, expand=True)
    image.paste(rotated, (6, int((top + bottom - rotated.height) / 2)))
    # -- reference lines and stage marks -------------------------------------------------------------------------
    for name, value in chart.references:
        _, py = px(0, value)
        for start in range(left, right, 12):
            draw.line([(start, py), (min(start + 6, right), py)], fill="#555555", width=1)
        draw.text((right - 4, py - 2), name, fill="#555555", font=small, anchor="rb")
    for x, name in chart.marks:
        qx, _ = px(x, y_low)
        for start in range(top, bottom, 6):
            draw.point([(qx, start), (qx, start + 1)], fill="#888888")
        draw.text((qx + 3, top + 3), name, fill="#555555", font=small, anchor="lt")
    # -- the curves, then the legend above the plot ---------------------------------------------------------------
    for i, series in enumerate(chart.series):
        colour = COLOURS[i % len(COLOURS)]
        points = [px(x, y) for x, y in series.points]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2, joint="curve")
        for qx, qy in points:
            draw.ellipse([qx - 3, qy - 3, qx + 3, qy + 3], fill=colour)
    x = left
    for i, series in enumerate(chart.series):
        colour = COLOURS[i % len(COLOURS)]
        draw.line([(x, 38), (x + 18, 38)], fill=colour, width=3)
        draw.text((x + 24, 38), series.label, fill="black", font=small, anchor="lm")
        x += 24 + int(draw.textlength(series.label, font=small)) + 20
    atomic_write(path, lambda f: image.save(f, format="PNG"))
