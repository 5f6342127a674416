"""Reading and presenting results: an experiment folder as tables (`results`), the analyses of
`python -m raytune_ft.analyze` (`analysis`), figures and HTML pieces (`plots`) and the "how far to
trust the front" section (`trust`). Matplotlib is imported inside the drawing functions.
"""

from __future__ import annotations

from raytune_ft.report.plots import (
    draw_test_intervals,
    format_front,
    format_interval,
    html_page,
    html_table,
    img_tag,
    mark_architectures,
    pareto_svg,
    plot_family_panels,
    plot_fronts,
    plot_hypervolume,
    plot_importances,
    plot_pareto,
    plot_subset_vs_full,
)

__all__ = ["draw_test_intervals", "format_front", "format_interval", "html_page", "html_table", "img_tag",
           "mark_architectures", "pareto_svg", "plot_family_panels", "plot_fronts", "plot_hypervolume",
           "plot_importances", "plot_pareto", "plot_subset_vs_full"]
