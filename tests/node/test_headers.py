"""Reading the indexed header fields: the full read and the shorter one for later
instances of a series give the same study- and instance-level fields."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from dicom_node.intake.headers import read_headers

FILES = ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "rtplan.dcm", "693_J2KI.dcm"]


@pytest.mark.parametrize("name", FILES)
def test_short_read_gives_the_full_reads_fields_but_the_series_ones(name: str) -> None:
    path = Path(get_testdata_file(name))
    full = read_headers(path)
    short = read_headers(path, series_fields=False)
    assert short.routing_fields == {}
    assert short == replace(full, routing_fields={})
    assert full.routing_fields  # the full read has routing fields
