"""Writing a model card: ``model_card.json`` and ``model_card.md`` rendered from it.

The JSON is the card; the Markdown is always rendered from it, so that the two never
disagree. Text a person wrote at the top of ``model_card.md`` is kept.
"""

from __future__ import annotations

from pathlib import Path

from inference.atomic_file import atomic_write
from inference.model_card import CARD_JSON, CARD_MD, ModelCard, SurveillancePlan
from inference.model_card_markdown import render_card

# model_card.md: text above this line is kept when the card is rendered again.
GENERATED_MARK = "<!-- generated from model_card.json below this line: edit that file -->"


def _write_text(path: Path, text: str) -> None:
    data = text.encode("utf-8")
    atomic_write(path, lambda handle: handle.write(data))


def _kept(markdown: Path) -> str:
    """What a person wrote in ``model_card.md`` above the rendered card."""
    if not markdown.is_file():
        return ""
    return markdown.read_text(encoding="utf-8").split(GENERATED_MARK)[0].rstrip()


def card_document(
    folder: Path | str, card: ModelCard | None, surveillance: SurveillancePlan | None = None
) -> str | None:
    """The card as a person reads it: the text written by hand, then ``card`` rendered
    (with ``surveillance`` as the plan in force); a hand-written ``model_card.md``
    alone where there is no ``model_card.json``; ``None`` where there is neither.

    Raises
    ------
    OSError
        When ``model_card.md`` exists but cannot be read.
    """
    kept = _kept(Path(folder) / CARD_MD)
    if card is None:
        return kept + "\n" if kept else None
    rendered = render_card(card, surveillance)
    return f"{kept}\n\n{rendered}" if kept else rendered


def write_card(folder: Path | str, card: ModelCard) -> Path:
    """Write ``model_card.json`` and render ``model_card.md`` from it; the JSON's path.

    Text a person wrote in ``model_card.md`` above `GENERATED_MARK` (or the whole
    file, if it has no mark) is kept above the rendered card.

    Raises
    ------
    OSError
        When the folder is not writable.
    """
    target = Path(folder)
    _write_text(target / CARD_JSON, card.model_dump_json(indent=1, exclude_none=True) + "\n")
    markdown = target / CARD_MD
    kept = _kept(markdown)
    head = f"{kept}\n\n{GENERATED_MARK}\n\n" if kept else f"{GENERATED_MARK}\n\n"
    _write_text(markdown, head + render_card(card))
    return target / CARD_JSON
