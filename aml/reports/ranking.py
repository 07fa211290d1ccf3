"""The visual ranking report of ``test.py --report DIR``.

Per data set, ``DIR/<dataset>/index.html`` shows every query (with its box) and its top-k
database images framed by their ground-truth label, with scores and the query's AP; each
query also gets one PNG (``q<NNN>.png``) with the same picture. With a teacher ranking
(asymmetric testing) a second row shows the teacher's own ranking of the same query, so the
effect of the student's encoding is visible. Thumbnails are written beside the page, which
therefore works offline. Only PIL is needed.
"""

import html
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from aml.data.images import BBox, load_image
from aml.utils.atomic import atomic_write
from aml.utils.errors import ConfigError

log = logging.getLogger(__name__)

#: frame colour of each label (RGB); the HTML uses the same colours.
LABEL_COLOURS: Dict[str, Tuple[int, int, int]] = {
    "query": (30, 90, 255),
    "easy": (0, 170, 0),
    "hard": (255, 140, 0),
    "positive": (0, 170, 0),
    "junk": (150, 150, 150),
    "negative": (220, 0, 0),
}
THUMB = 128  # longer side of a thumbnail, pixels
FRAME = 5  # frame width, pixels
CAPTION = 34  # caption height under a tile, pixels
TILE_W, TILE_H = THUMB + 2 * FRAME + 8, THUMB + 2 * FRAME + CAPTION
ROW_LABEL_W = 70  # left margin holding the row's name


@dataclass
class Ranking:
    """One encoder's ranking of one query: the top-k database indices, their scores and the
    query's AP (None when the query has no positives)."""

    name: str
    indices: Sequence[int]
    scores: Sequence[float]
    ap: Optional[float]


def shown_name(path: str) -> str:
    """An image's file name without its extension, as text: bytes that are not UTF-8 (a
    Linux file name is bytes; Python keeps them as surrogates) become U+FFFD."""
    return Path(path).stem.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def label_of(entry: Mapping[str, Any], index: int) -> str:
    """The ground-truth label of database image ``index`` for a query's gnd entry:
    easy/hard/junk (revisited), positive/junk (classic), else negative."""
    for key, label in (("easy", "easy"), ("hard", "hard"), ("ok", "positive"), ("junk", "junk")):
        if key in entry and index in set(np.asarray(entry[key]).ravel().tolist()):
            return label
    return "negative"


def tile_origin(row: int, column: int) -> Tuple[int, int]:
    """(x, y) of the top-left corner of a tile's frame in a query's PNG; column 0 is the
    query, row 0 the tested network's ranking, row 1 the teacher's."""
    return ROW_LABEL_W + column * TILE_W, 24 + row * TILE_H


def _thumbnail(path: str, bbx: Optional[BBox] = None) -> Image.Image:
    """A thumbnail (longer side at most THUMB); a query's box is drawn on it."""
    image = load_image(path)
    full_width = image.width
    image.thumbnail((THUMB, THUMB), Image.Resampling.LANCZOS)
    if bbx is not None:
        scale = image.width / full_width
        ImageDraw.Draw(image).rectangle([float(c) * scale for c in bbx], outline=(255, 220, 0), width=2)
    return image


def _framed(thumb: Image.Image, label: str) -> Image.Image:
    framed = Image.new("RGB", (thumb.width + 2 * FRAME, thumb.height + 2 * FRAME), LABEL_COLOURS[label])
    framed.paste(thumb, (FRAME, FRAME))
    return framed


def _ap_text(ap: Optional[float]) -> str:
    return "AP -" if ap is None else f"AP {100 * ap:.1f}"


def query_png(
    query_thumb: Image.Image,
    query_name: str,
    rankings: Sequence[Ranking],
    entry: Mapping[str, Any],
    thumbs: Dict[int, Image.Image],
    path: Path,
) -> None:
    """One query's picture: its ranking(s) as rows of framed thumbnails with captions."""
    top_k = max(len(r.indices) for r in rankings)
    width, height = ROW_LABEL_W + (top_k + 1) * TILE_W, 24 + len(rankings) * TILE_H
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    draw.text((4, 4), f"query {query_name}", fill="black", font=font)
    for row, ranking in enumerate(rankings):
        x, y = tile_origin(row, 0)
        canvas.paste(_framed(query_thumb, "query"), (x, y))
        draw.text((4, y + 4), ranking.name.split(" ")[0][:10], fill="black", font=font)
        draw.text((4, y + 20), _ap_text(ranking.ap), fill="black", font=font)
        for column, (index, score) in enumerate(zip(ranking.indices, ranking.scores, strict=True), start=1):
            label = label_of(entry, int(index))
            x, y = tile_origin(row, column)
            framed = _framed(thumbs[int(index)], label)
            canvas.paste(framed, (x, y))
            draw.text((x, y + framed.height + 2), f"#{column} {score:.3f}\n{label}", fill="black", font=font)
    _save_image(canvas, path, format="PNG")


def _save_image(image: Image.Image, path: Path, **options) -> None:
    """``image.save`` through the atomic writer: a full disk leaves no cut image behind."""
    atomic_write(path, lambda out: image.save(out, **options))


_STYLE = (
    "body{font-family:sans-serif;margin:1em}section{margin-bottom:1.5em}figure{display:inline-block;"
    "margin:2px;text-align:center;font-size:11px;vertical-align:top;width:142px;white-space:normal;"
    "overflow-wrap:anywhere}figure img{border:5px solid;display:block;margin:auto}"
    ".row{white-space:nowrap}.name{display:inline-block;width:9em;vertical-align:top;font-size:13px}"
    + "".join(f".{label} img{{border-color:rgb{colour}}}" for label, colour in LABEL_COLOURS.items())
)


def _figure(thumb: str, label: str, *caption: str) -> str:
    lines = "<br>".join(html.escape(line) for line in caption)
    return (
        f'<figure class="{label}" data-label="{label}"><img src="{html.escape(thumb)}" alt="{label}">'
        f"<figcaption>{lines}</figcaption></figure>"
    )


#: the file every report folder holds: what marks the folder as one that --report may replace
REPORT_MARK = ".aml-ranking-report"


def check_report_folder(folder: Path) -> None:
    """Refuse a report folder that holds files other than an aml ranking report's.

    A report replaces its folder's ``index.html`` and deletes the images of an earlier report
    there: a folder of the user's own files (a web site, photos) is not touched.

    Args:
        folder: ``--report``'s folder of one test set (``DIR/<dataset>``).

    Raises:
        ConfigError: naming the folder and one of its files.

    Examples:
        >>> import pathlib, tempfile
        >>> from aml.reports.ranking import check_report_folder
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     check_report_folder(pathlib.Path(folder) / "roxford5k")  # not there yet: fine
    """
    if not folder.is_dir() or (folder / REPORT_MARK).is_file():
        return
    found = sorted(path.name for path in folder.iterdir())
    if found and not _older_report(folder):
        shown = found[0] + (", ..." if len(found) > 1 else "")
        raise ConfigError(
            f"--report: {folder} holds files that are not an aml ranking report ({shown}), which a report would "
            "replace or delete; give --report another folder, or empty that one"
        )


_REPORT_IMAGE = re.compile(r"q\d+\.png")


def _older_report(folder: Path) -> bool:
    """A report written before reports were marked: its page's title says so; or one cut short
    before its page was written: nothing but its query PNGs and thumbnails."""
    page = folder / "index.html"
    if page.is_file():
        with page.open("rb") as handle:
            return b" ranking report</title>" in handle.read(4096)
    thumbs = folder / "thumbs"
    return all(
        _REPORT_IMAGE.fullmatch(path.name) or (path == thumbs and path.is_dir()) for path in folder.iterdir()
    ) and all(path.suffix == ".jpg" for path in thumbs.glob("*"))


def _remove_stale_images(folder: Path, shown: Sequence[int], db_indices: Iterable[int]) -> None:
    """Delete the images of an earlier report in ``folder`` that this one did not write (the
    PNGs and thumbnails of queries ``shown``, the thumbnails of database images ``db_indices``)."""
    written = {f"q{q:03d}.png" for q in shown} | {f"thumbs/query{q:03d}.jpg" for q in shown}
    written |= {f"thumbs/db{index:06d}.jpg" for index in db_indices}
    for stale in [*folder.glob("q[0-9]*.png"), *folder.glob("thumbs/*.jpg")]:
        if stale.relative_to(folder).as_posix() not in written:
            stale.unlink()


def write_report(
    folder: Path,
    dataset: str,
    gnd: Sequence[Mapping[str, Any]],
    images: Sequence[str],
    queries: Sequence[str],
    bbxs: Sequence[Optional[BBox]],
    rankings: Sequence[Sequence[Ranking]],
    summary: str = "",
) -> Path:
    """Write ``folder/index.html``, ``folder/q<NNN>.png`` and ``folder/thumbs/``;
    ``rankings[q]`` lists the rankings of query q (the tested network's first). Queries
    without rankings (skipped) are left out. Returns the HTML path.

    An earlier report in ``folder`` is replaced: its page goes first (an interrupted rewrite
    leaves no page that links a mix of the two), its images that this one does not write last.
    A folder of other files is refused (`check_report_folder`)."""
    folder = Path(folder)
    check_report_folder(folder)
    (folder / "thumbs").mkdir(parents=True, exist_ok=True)
    (folder / REPORT_MARK).touch()
    (folder / "index.html").unlink(missing_ok=True)
    db_thumbs: Dict[int, Image.Image] = {}
    sections = []
    for q, query_rankings in enumerate(rankings):
        if not query_rankings:
            continue
        query_thumb = _thumbnail(queries[q], bbxs[q])
        query_file = f"thumbs/query{q:03d}.jpg"
        _save_image(query_thumb, folder / query_file, format="JPEG", quality=90)
        for ranking in query_rankings:
            for index in ranking.indices:
                index = int(index)
                if index not in db_thumbs:
                    db_thumbs[index] = _thumbnail(images[index])
                    _save_image(db_thumbs[index], folder / f"thumbs/db{index:06d}.jpg", format="JPEG", quality=90)
        png = f"q{q:03d}.png"
        query_png(query_thumb, shown_name(queries[q]), query_rankings, gnd[q], db_thumbs, folder / png)
        rows = []
        for ranking in query_rankings:
            figures = [_figure(query_file, "query", "query")]
            figures += [
                _figure(
                    f"thumbs/db{int(i):06d}.jpg",
                    label_of(gnd[q], int(i)),
                    f"#{k} {s:.3f} {label_of(gnd[q], int(i))}",
                    shown_name(images[int(i)]),
                )
                for k, (i, s) in enumerate(zip(ranking.indices, ranking.scores, strict=True), start=1)
            ]
            rows.append(
                f'<div class="row"><span class="name">{html.escape(ranking.name)}<br>'
                f"{_ap_text(ranking.ap)}</span>{''.join(figures)}</div>"
            )
        sections.append(
            f'<section id="q{q:03d}"><h3>query {q}: {html.escape(shown_name(queries[q]))} '
            f'(<a href="{png}">png</a>)</h3>{"".join(rows)}</section>'
        )
    legend = " ".join(f'<span style="color:rgb{c}">&#9632; {label}</span>' for label, c in LABEL_COLOURS.items())
    page = (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(dataset)} ranking report</title>'
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(dataset)}</h1><p>{html.escape(summary)}</p>"
        f"<p>{legend}</p>{''.join(sections)}</body></html>\n"
    )
    _remove_stale_images(folder, [q for q, found in enumerate(rankings) if found], db_thumbs)
    out = folder / "index.html"
    atomic_write(out, lambda handle: handle.write(page.encode("utf-8", "replace")))  # whole or not at all
    log.debug(">> %s: ranking report written to %s", dataset, out)
    return out
