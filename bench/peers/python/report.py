"""reportlab's peer of actorbot's /report in bench/compare.sh: the 5-page
conversation report of actorbot's documents benchmark (tests/bench/documents.rs:
the same six exchanges of mixed Latin, Cyrillic and Greek words, the same
A4 page, margins, sizes and "Page N of M" footer), laid out with reportlab's
platypus as a Python bot would, and how many such reports one core renders
per second.

  python report.py --font ttf FONT.ttf   # a registered TTF (DejaVu Sans), subset
                                         # and embedded: Unicode text renders
  python report.py --font base14         # Helvetica, nothing embedded: Cyrillic
                                         # and Greek do not render

Prints one line: reports/s, pages, bytes.
"""

import argparse
import io
import time

from reportlab.lib.colors import Color
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen import canvas
from reportlab.platypus import HRFlowable, Paragraph, SimpleDocTemplate, Spacer
from xml.sax.saxutils import escape

MARGIN_X = 56.693
MARGIN_TOP = 56.693
MARGIN_BOTTOM = 62.0
FOOTER_BASELINE = 34.0
LEADING = 1.4

WORDS = [
    "actors", "mailbox", "Привет", "καλημέρα", "naïve", "supervision",
    "backpressure", "throughput", "latency", "Zürich", "сообщение", "λόγος",
]


def text(seed: int, n: int) -> str:
    return " ".join(WORDS[(seed * 7 + i * 13) % len(WORDS)] for i in range(n))


def five_page_report():
    exchanges = [(f"Question {i}: {text(i, 20)}", text(i + 100, 250)) for i in range(6)]
    return "Benchmark User", "2026-11-25 12:00 UTC", exchanges


class NumberedCanvas(canvas.Canvas):
    """Defers pages to the end so that each footer knows the page count."""

    font = "Helvetica"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._saved = []

    def showPage(self):
        self._saved.append(dict(self.__dict__))
        self._startPage()

    def save(self):
        total = len(self._saved)
        for number, state in enumerate(self._saved, 1):
            self.__dict__.update(state)
            self.setFont(self.font, 9.0)
            self.setFillColor(Color(0.40, 0.40, 0.44))
            self.drawCentredString(A4[0] / 2, FOOTER_BASELINE, f"Page {number} of {total}")
            super().showPage()
        super().save()


def render(font: str, user: str, generated: str, exchanges) -> tuple[bytes, int]:
    def style(name, size, rgb, before=0.0, indent=0.0):
        return ParagraphStyle(
            name, fontName=font, fontSize=size, leading=size * LEADING,
            textColor=Color(*rgb), spaceBefore=before,
            leftIndent=indent, firstLineIndent=-indent,
        )

    title = style("title", 20.0, (0.10, 0.10, 0.12))
    meta = style("meta", 10.0, (0.40, 0.40, 0.44))
    heading = style("heading", 11.5, (0.12, 0.30, 0.55))
    label_w = pdfmetrics.stringWidth("Q: ", font, 10.5)
    question = style("question", 10.5, (0.15, 0.15, 0.30), before=4.0, indent=label_w)
    answer = style("answer", 10.5, (0.0, 0.0, 0.0), before=6.0, indent=label_w)
    heading.keepWithNext = True

    story = [
        Paragraph("Conversation report", title),
        Spacer(0, 6.0),
        Paragraph(escape(f"User: {user}"), meta),
        Paragraph(escape(f"Generated: {generated}"), meta),
    ]
    for i, (q, a) in enumerate(exchanges):
        story.append(Spacer(0, 8.0))
        story.append(HRFlowable(width="100%", thickness=0.5, color=Color(0.8, 0.8, 0.84),
                                spaceBefore=0, spaceAfter=8.0))
        story.append(Paragraph(f"Exchange {i + 1} of {len(exchanges)}", heading))
        story.append(Paragraph(escape("Q: " + q), question))
        story.append(Paragraph(escape("A: " + a), answer))

    out = io.BytesIO()
    doc = SimpleDocTemplate(
        out, pagesize=A4, leftMargin=MARGIN_X, rightMargin=MARGIN_X,
        topMargin=MARGIN_TOP, bottomMargin=MARGIN_BOTTOM,
        title=f"Conversation report: {user}",
    )
    canvasmaker = type("Numbered", (NumberedCanvas,), {"font": font})
    doc.build(story, canvasmaker=canvasmaker)
    return out.getvalue(), doc.page


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--font", choices=["ttf", "base14"], required=True)
    parser.add_argument("ttf", nargs="?", help="the TTF file, with --font ttf")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    if args.font == "ttf":
        pdfmetrics.registerFont(TTFont("DejaVuSans", args.ttf))
        font = "DejaVuSans"
    else:
        font = "Helvetica"
    report = five_page_report()
    pdf, pages = render(font, *report)  # warm up: imports, font tables
    runs = 0
    started = time.perf_counter()
    while time.perf_counter() - started < args.seconds:
        render(font, *report)
        runs += 1
    rate = runs / (time.perf_counter() - started)
    print(f"reportlab {args.font}: {rate:.1f} reports/s on one core ({pages} pages, {len(pdf)} bytes)")


if __name__ == "__main__":
    main()
