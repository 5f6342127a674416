"""The HTML page (report/page.py): tables formatted and escaped, one self-contained file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from raytune_ft.report import figures
from raytune_ft.report.page import html_page, html_table, img_tag


def test_html_table_formats_and_escapes() -> None:
    frame = pd.DataFrame({"trial_id": ["<b>t1</b>", "t0"], "val_acc": [0.81234567, 0.9],
                          "nonzero_float": [1_234_567.0, np.nan]})  # ints made float by a missing value
    text = html_table(frame)
    assert "&lt;b&gt;t1&lt;/b&gt;" in text and "<b>" not in text
    assert "<td>1,234,567</td>" in text and "<td>0.8123</td>" in text
    assert "<td></td>" in text and "nan" not in text  # missing values are empty cells
    assert "no rows" in html_table(frame.iloc[0:0])


def test_html_page_loads_nothing_from_the_network(tmp_path: Path) -> None:
    curve = pd.DataFrame({"completed": [1, 2], "elapsed_s": [30.0, 90.0], "hypervolume": [0.2, 0.5]})
    png = figures.plot_hypervolume(curve, tmp_path / "hv.png")
    page = html_page("a <title>", img_tag(png, "front"))
    assert "<title>a &lt;title&gt;</title>" in page
    assert 'src="data:image/png;base64,iVBORw0KGgo' in page
    assert "http" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
