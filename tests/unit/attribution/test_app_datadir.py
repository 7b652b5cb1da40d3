"""A Faust worker keeps its data folder out of the directory it was started in."""

from __future__ import annotations

from pathlib import Path

from pipeline.app import create_app
from pipeline.settings import Settings


def test_the_faust_data_folder_is_not_in_the_working_directory() -> None:
    app = create_app(Settings(app_id="t-datadir"), "attribution")
    folder = Path(app.conf.datadir).resolve()
    assert folder.name == "t-datadir-attribution-data"
    assert Path.cwd().resolve() not in folder.parents
    assert folder.parent.is_dir()
