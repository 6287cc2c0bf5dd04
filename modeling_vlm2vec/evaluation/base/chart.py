"""Bar chart of an MMEB summary, drawn with Pillow only (no plotting dependency).

One group of bars per evaluated dataset, then one per aggregate: ours (blue) beside the paper's VLM2Vec number
(grey) where the paper has one (the reference's legend only when some bar has one). The y axis is the summary's
metric in percent, 0-100. A summary may name its chart (``chart_title``, default ``"MMEB <metric>"``) and its
reference column (``paper_label``, default VLM2Vec's paper).
"""

from __future__ import annotations

import io

from PIL import Image, ImageDraw, ImageFont

CHART_SIZE = (1200, 600)
_OURS, _PAPER, _GRID, _INK = (52, 101, 164), (170, 170, 170), (225, 225, 225), (30, 30, 30)
_MARGIN_LEFT, _MARGIN_RIGHT, _MARGIN_TOP, _MARGIN_BOTTOM = 50, 20, 50, 130


def _bars(summary: dict) -> list[tuple[str, float, float | None]]:
    """(label, ours, paper-or-None) per bar group, hit@1 as fractions: datasets then aggregates."""
    metric = summary["metric"]
    groups = [(name, row[metric], row[f"paper_{metric}"]) for name, row in summary["datasets"].items()]
    groups += [
        (f"{group} {agg['n']}/{agg['N']}", agg[metric], agg[f"paper_{metric}"])
        for group, agg in summary["aggregates"].items()
    ]
    return groups


def _vertical_text(draw_target: Image.Image, text: str, x: int, y: int, font: ImageFont.ImageFont) -> None:
    """Paste ``text`` rotated 90 degrees so its end touches (x, y) from below (labels read bottom-up)."""
    left, top, right, bottom = font.getbbox(text)
    label = Image.new("RGBA", (right - left + 2, bottom - top + 2), (255, 255, 255, 0))
    ImageDraw.Draw(label).text((-left + 1, -top + 1), text, font=font, fill=_INK)
    label = label.rotate(90, expand=True)
    draw_target.paste(label, (x - label.width // 2, y), label)


def render_chart(summary: dict, size: tuple[int, int] = CHART_SIZE) -> bytes:
    """PNG bytes of the summary's bar chart, ``size`` = (width, height) in pixels."""
    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    plot_left, plot_right = _MARGIN_LEFT, width - _MARGIN_RIGHT
    plot_top, plot_bottom = _MARGIN_TOP, height - _MARGIN_BOTTOM

    def y_of(fraction: float) -> int:
        return round(plot_bottom - min(max(fraction, 0.0), 1.0) * (plot_bottom - plot_top))

    for tick in range(0, 101, 20):
        y = y_of(tick / 100)
        draw.line([(plot_left, y), (plot_right, y)], fill=_GRID)
        draw.text((8, y - 6), f"{tick}", font=font, fill=_INK)
    draw.text(
        (plot_left, 12),
        f"{summary.get('chart_title', 'MMEB ' + summary['metric'])} (%): {summary['model']}"[:150],
        font=font,
        fill=_INK,
    )
    draw.rectangle([plot_right - 210, 10, plot_right - 200, 20], fill=_OURS)
    draw.text((plot_right - 195, 9), "ours", font=font, fill=_INK)
    bars = _bars(summary)
    if any(paper is not None for _, _, paper in bars):
        draw.rectangle([plot_right - 150, 10, plot_right - 140, 20], fill=_PAPER)
        draw.text((plot_right - 135, 9), summary.get("paper_label", "VLM2Vec (paper)"), font=font, fill=_INK)

    slot = (plot_right - plot_left) / max(len(bars), 1)
    bar = max(1.0, slot * 0.38)
    for i, (label, ours, paper) in enumerate(bars):
        center = plot_left + slot * (i + 0.5)
        ours_left = center - bar if paper is not None else center - bar / 2
        draw.rectangle([round(ours_left), y_of(ours), round(ours_left + bar) - 1, plot_bottom], fill=_OURS)
        if paper is not None:
            draw.rectangle([round(center), y_of(paper), round(center + bar) - 1, plot_bottom], fill=_PAPER)
        _vertical_text(image, label, round(center), plot_bottom + 4, font)
    draw.line([(plot_left, plot_bottom), (plot_right, plot_bottom)], fill=_INK)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
