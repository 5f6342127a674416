"""The README: a front page of at most 200 lines whose notebook example runs as written (the shared
`readme_run` fixture executes it, with a tiny search in place of its overrides)."""

from __future__ import annotations

import pandas as pd
import pytest

import raytune_ft
from tests.conftest import README, README_OVERRIDES, readme_example


def test_readme_is_a_front_page_with_the_python_example():
    assert len(README.read_text().splitlines()) <= 200
    code = readme_example()
    assert f'raytune_ft.run_search("quickstart", overrides={README_OVERRIDES})' in code
    compile(code, str(README), "exec")


@pytest.mark.e2e
def test_the_readme_notebook_example_runs_as_written(readme_run):
    v = readme_run.variables
    exp = v["exp"]
    assert isinstance(exp, raytune_ft.Experiment) and exp.state == "finished"
    assert len(exp.trials) == 3 and (exp.trials["status"] == "completed").all()
    assert len(exp.front) >= 1 and "test_acc" in exp.front
    assert v["logits"].shape == (5, 10)
    assert v["preprocess"].labels(v["logits"]) == [str(i) for i in v["logits"].argmax(1)]  # digits' names
    index = pd.read_csv(readme_run.cwd / "shipped" / "index.csv")
    assert len(index) == min(2, len(exp.front))
    assert all((readme_run.cwd / "shipped" / folder / "manifest.json").is_file() for folder in index["folder"])
    assert v["study"].metric_names == ["val_acc", "model_bytes_compressed"]
    assert [t.state.name for t in v["study"].trials] == ["COMPLETE"] * 3
    print(f"the README example's search took {readme_run.seconds:.0f} s")
