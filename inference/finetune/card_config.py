"""``[card]`` of a training config: the model card's facts that only people know.

Which sites or archives the images came from and how the labels were made cannot be
read from the DICOM; the training config states them, and the card
(`inference.finetune.model_card`) carries them beside what the data show.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class CardSection(BaseModel):
    """``[card]`` of a training config: what only the people who made the data know."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sources: list[str] = []  # where the images came from: sites, archives, public sets
    labelling: str = ""  # how labels were made: readers, consensus, reports, SEG tools
    limitations: list[str] = []  # known limitations, one sentence each
