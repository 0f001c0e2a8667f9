"""Reads the logs bench/compare.sh wrote into a directory and prints the
side-by-side table: each figure of actorbot and of each peer, one value per
round (A B A B: round n of each was measured minutes apart), and actorbot
divided by the peer in the same round. It measures nothing itself.

  python bench/compare_table.py DIR
"""

import re
import statistics
import sys
from pathlib import Path

out = Path(sys.argv[1])


def grab(name: str, pattern: str, rounds: list[int], pick=None) -> list[float | None]:
    """The first group of `pattern` in NAME-<round>.log, for each round."""
    values = []
    for r in rounds:
        path = out / f"{name}-{r}.log"
        text = path.read_text() if path.exists() else ""
        if pick:
            values.append(pick(text))
            continue
        m = re.search(pattern, text)
        values.append(float(m.group(1).replace(",", "")) if m else None)
    return values


def startup(index: int, restarts_only: bool):
    """The median over the starts of one figure of the startup lines."""

    def pick(text: str):
        rows = re.findall(
            r"startup (\d+) \(([^)]*)\): exec → first getUpdates ([\d.]+) ms, → first reply ([\d.]+) ms; RSS ([\d.]+) MiB",
            text,
        )
        if restarts_only:
            rows = [r for r in rows if "fresh" not in r[1]] or rows
        values = [float(r[index]) for r in rows]
        return statistics.median(values) if values else None

    return pick


rounds = sorted(
    {int(m.group(1)) for p in out.glob("burst-actorbot-*.log") if (m := re.search(r"-(\d+)\.log$", p.name))}
)

BOTS = ["teloxide", "aiogram"]
rows = []  # (figure, actorbot values, peer, peer values, better)


def bots(figure: str, kind: str, pattern: str, better: str, pick=None):
    ours = grab(f"{kind}-actorbot", pattern, rounds, pick)
    for bot in BOTS:
        rows.append((figure, ours, bot, grab(f"{kind}-{bot}", pattern, rounds, pick), better))


bots(
    "burst: 20,000 /start from 10,000 users queued at once, replies/s (first to last reply)",
    "burst", r"([\d]+) updates/s between the first and last reply", "higher",
)
bots("burst: bot's CPU per update, µs", "burst", r"\(([\d]+) µs per update, [\d.]+ cores", "lower")
bots("burst: peak RSS, MiB", "burst", r"peak ([\d.]+) MiB during it", "lower")
bots("open loop 5,000 updates/s for 10 s: p50 update→reply, ms", "latency", r"p50 ([\d.]+) ms", "lower")
bots("open loop: p99 update→reply, ms", "latency", r"p99 ([\d.]+) ms", "lower")
bots("open loop: peak RSS, MiB", "latency", r"peak ([\d.]+) MiB during the run", "lower")
bots("open loop: bot's CPU per update, µs", "latency", r"CPU-seconds \(([\d]+) µs per update\)", "lower")
bots(
    "exec → first getUpdates, ms (median of 5 starts; actorbot: its 4 restarts)",
    "startup", "", "lower", startup(2, True),
)


def fresh(text: str):
    """actorbot's first start, on a fresh data directory; a peer's median."""
    m = re.search(r"fresh data directory\): exec → first getUpdates ([\d.]+)", text)
    return float(m.group(1)) if m else startup(2, False)(text)


bots("exec → first getUpdates, ms: actorbot's first start (fresh data directory)", "startup", "", "lower", fresh)
bots("RSS 1 s after start and one reply, MiB (median)", "startup", "", "lower", startup(4, False))

report = grab("documents-actorbot", r"reports/s \(\d+ pages\): ([\d.]+) on one core", rounds)
photo = grab("documents-actorbot", r"photos/s \([^)]*\): ([\d.]+) on one core", rounds)
rows.append(("5-page report, reports/s on one core (actorbot: DejaVu Sans subset embedded)", report,
             "reportlab, DejaVu Sans TTF registered", grab("report-ttf", r"([\d.]+) reports/s", rounds), "higher"))
rows.append(("5-page report, reports/s on one core", report,
             "reportlab, base-14 Helvetica (no Cyrillic or Greek)", grab("report-base14", r"([\d.]+) reports/s", rounds), "higher"))
rows.append(("12 MP JPEG → A4 page JPEG (1240 × 930), photos/s on one core", photo,
             "Pillow (exif_transpose, thumbnail, save q85)", grab("photo-pillow", r"([\d.]+) photos/s", rounds), "higher"))

# The fake's own cost: what any bot's burst is bounded by.
fake = grab("burst-actorbot", r"the fake Telegram serving it used [\d.]+ \(([\d]+) µs per update\)", rounds)


def fmt(v):
    if v is None:
        return "—"
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "—"
    r = a / b
    return f"{r:.2f}×" if r >= 0.1 else f"{r:.2g}×"


about = (out / "about.txt").read_text().strip() if (out / "about.txt").exists() else ""
for line in about.splitlines():
    if line.strip():
        print(f"> {line}")
print()
print(f"Values per round ({len(rounds)} rounds, each contender in turn within a round), separated by \" / \".")
print()
print("| figure | actorbot | peer | peer's figure | actorbot ÷ peer | better |")
print("|---|---|---|---|---|---|")
for figure, ours, peer, theirs, better in rows:
    print(
        f"| {figure} | {' / '.join(map(fmt, ours))} | {peer} | {' / '.join(map(fmt, theirs))} | "
        f"{' / '.join(ratio(a, b) for a, b in zip(ours, theirs))} | {better} |"
    )
print()
print(
    "The fake Telegram's own CPU per update in actorbot's bursts: "
    + " / ".join(f"{fmt(v)} µs" for v in fake)
    + " (a bot that cost nothing would still be bound by it: at most "
    + " / ".join(fmt(1e6 / v) if v else "—" for v in fake)
    + " updates/s on the fake's one worker thread)."
)

# actorbot over TLS: HTTP/2 against HTTP/1.1, when the run has them.
TLS_FIGURES = [
    ("burst: replies/s", "burst", r"([\d]+) updates/s between the first and last reply", "higher"),
    ("burst: daemon's CPU per update, µs", "burst", r"\(([\d]+) µs per update, [\d.]+ cores", "lower"),
    ("burst: peak RSS, MiB", "burst", r"peak ([\d.]+) MiB during it", "lower"),
    ("open loop: p50, ms", "latency", r"p50 ([\d.]+) ms", "lower"),
    ("open loop: p99, ms", "latency", r"p99 ([\d.]+) ms", "lower"),
    ("open loop: daemon's CPU per update, µs", "latency", r"CPU-seconds \(([\d]+) µs per update\)", "lower"),
]
if any((out / f"tls-burst-http2-{r}.log").exists() for r in rounds):
    print()
    print("actorbot against the fake behind TLS (ALPN h2, http/1.1), by TELEGRAM_HTTP_VERSION:")
    print()
    print("| figure | HTTP/1.1 | HTTP/2 | HTTP/2 ÷ HTTP/1.1 | better |")
    print("|---|---|---|---|---|")
    for figure, kind, pattern, better in TLS_FIGURES:
        h1 = grab(f"tls-{kind}-http1.1", pattern, rounds)
        h2 = grab(f"tls-{kind}-http2", pattern, rounds)
        print(
            f"| {figure} | {' / '.join(map(fmt, h1))} | {' / '.join(map(fmt, h2))} | "
            f"{' / '.join(ratio(b, a) for a, b in zip(h1, h2))} | {better} |"
        )
