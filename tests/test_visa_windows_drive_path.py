"""A Windows drive path in a VisA split file is refused as absolute."""

from __future__ import annotations

import pytest
from dataset_fixtures import make_visa_tree

from realnet.data.layouts import load_dataset
from realnet.errors import RealnetError


def test_a_windows_drive_path_in_a_visa_split_file_is_refused_as_absolute(tmp_path):
    """C:\\VisA\\... is absolute on Windows; on POSIX it must not be joined under the root as a name
    (which named a missing file, not the absolute path)."""
    root = make_visa_tree(tmp_path)
    split_file = root / "split_csv" / "1cls.csv"
    listed = "candle/Data/Images/Anomaly/000.JPG"
    windows = "C:\\VisA\\" + listed.replace("/", "\\")
    split_file.write_text(split_file.read_text().replace(listed, windows))
    with pytest.raises(RealnetError, match=r"1cls.csv: line \d+ lists C:\\VisA\\candle\\Data\\Images\\Anomaly\\000.JPG, "
                                           "an absolute path; list paths relative to the data root"):
        load_dataset(root, "candle", "visa")
