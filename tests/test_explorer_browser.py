"""The cluster explorer page in headless Chromium: it opens from file:// with no console errors, has a panel per
component, shows a galaxy when the pointer is over its point and pins it on a click, filters the map, and exports
the names typed into it as component_names.json, which `predict --names` turns into a column."""

from __future__ import annotations

import json
import time

import pyarrow.parquet as pq
import pytest
from selenium.webdriver.common.action_chains import ActionChains

from astrovader.cli import main

from .test_analysis import tiny_run
from .test_report_browser import browser  # noqa: F401  (the shared headless-Chromium fixture)


def _wait(drv, script: str, timeout: float = 20.0):
    end = time.time() + timeout
    while time.time() < end:
        value = drv.execute_script(script)
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for: {script}")


def _pointer_to_galaxy(drv, i: int, click: bool = False) -> None:
    """Move the real mouse pointer onto galaxy ``i``'s point (zooming the map onto it first)."""
    x, y = drv.execute_script("""
        const doc = Bokeh.documents[0], s = doc.get_model_by_name('galaxies'), p = doc.get_model_by_name('map');
        const x = s.data.x[arguments[0]], y = s.data.y[arguments[0]];
        const w = 0.02 * (p.x_range.end - p.x_range.start), h = 0.02 * (p.y_range.end - p.y_range.start);
        p.x_range.setv({start: x - w, end: x + w}); p.y_range.setv({start: y - h, end: y + h});
        const v = Bokeh.index.find_one(p), r = v.el.getBoundingClientRect();
        return [r.left + v.frame.x_scale.compute(x), r.top + v.frame.y_scale.compute(y)];""", i)
    time.sleep(0.3)  # let the zoom render
    x, y = drv.execute_script("""
        const doc = Bokeh.documents[0], s = doc.get_model_by_name('galaxies'), p = doc.get_model_by_name('map');
        const v = Bokeh.index.find_one(p), r = v.el.getBoundingClientRect();
        return [r.left + v.frame.x_scale.compute(s.data.x[arguments[0]]),
                r.top + v.frame.y_scale.compute(s.data.y[arguments[0]])];""", i)
    actions = ActionChains(drv)
    actions.w3c_actions.pointer_action.move_to_location(int(round(x)), int(round(y)))
    if click:
        actions.w3c_actions.pointer_action.click()
    actions.perform()


def test_explorer_page_browse_filter_name_and_export(browser, tmp_path_factory, tmp_path):  # noqa: F811
    run, ds = tiny_run(tmp_path_factory)
    out = tmp_path / "explore"
    assert main(["explore", str(run), str(ds), str(out), "--steps", "3", "--traverse-steps", "3", "--quiet"]) == 0
    page = out / "explorer.html"
    assert 1e5 < page.stat().st_size < 8e6 and "http" not in page.read_text().split("<body>")[1][:2000]

    browser.set_window_size(1320, 1000)
    browser.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(tmp_path)})
    browser.get(page.resolve().as_uri())
    _wait(browser, "return document.body.dataset.ready === 'yes'")
    errors = [e for e in browser.get_log("browser") if e.get("level") in ("SEVERE", "ERROR")]
    assert not errors, f"console errors: {errors}"
    assert browser.execute_script("return document.querySelectorAll('section.comp[id]').length") == 3
    # the page opens on the report's rows (the test split); show every galaxy for what follows
    assert browser.execute_script("return document.getElementById('f-split').value") == "test"
    assert browser.execute_script("return document.getElementById('f-count').textContent") == "60"
    browser.execute_script("const el = document.getElementById('f-split'); el.value = '';"
                           "el.dispatchEvent(new Event('input'));")
    assert browser.execute_script("return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")

    # hovering a point shows that galaxy; a click pins it
    gid = browser.execute_script("return Bokeh.documents[0].get_model_by_name('galaxies').data.id[5]")
    _pointer_to_galaxy(browser, 5)
    _wait(browser, "return !document.getElementById('hovered').hidden")
    assert browser.execute_script("return document.querySelector('#hovered .input').dataset.shown") == gid
    assert "url(" in browser.execute_script(
        "return getComputedStyle(document.querySelector('#hovered .input')).backgroundImage")
    _pointer_to_galaxy(browser, 5, click=True)
    _wait(browser, "return !document.getElementById('pinned').hidden")
    assert browser.execute_script("return document.querySelector('#pinned .input').dataset.shown") == gid

    # a probability cut hides the less certain galaxies
    shown = browser.execute_script("""
        const el = document.getElementById('f-prob'); el.value = '0.99';
        el.dispatchEvent(new Event('input')); return Bokeh.documents[0].get_model_by_name('shown').booleans;""")
    assert 0 <= sum(shown) < len(shown)

    # a name typed for component 1 survives a reload and is exported
    box = browser.find_element("css selector", "#comp-1 input.name")
    box.send_keys("round and bright")
    browser.refresh()
    _wait(browser, "return document.body.dataset.ready === 'yes'")
    assert browser.execute_script("return document.querySelector('#comp-1 input.name').value") == "round and bright"
    browser.execute_script("document.getElementById('export').click()")
    exported = tmp_path / "component_names.json"
    end = time.time() + 10
    while not exported.is_file() and time.time() < end:
        time.sleep(0.1)
    body = json.loads(exported.read_text())
    assert body["components"]["1"]["name"] == "round and bright" and body["n_components"] == 3

    # predict --names writes the column and the metadata
    cat = tmp_path / "p.parquet"
    assert main(["predict", str(run), str(ds), str(cat), "--names", str(exported), "--quiet"]) == 0
    table = pq.read_table(cat)
    frame = table.to_pandas()
    assert (frame.loc[frame["component"] == 1, "component_name"] == "round and bright").all()
    assert (frame.loc[frame["component"] != 1, "component_name"] == "").all()
    assert json.loads(table.schema.metadata[b"CNAMES"]) == {"1": "round and bright"}


def test_names_file_errors_are_one_line(tmp_path_factory, tmp_path, capsys):
    run, ds = tiny_run(tmp_path_factory)
    bad = tmp_path / "names.json"
    for content, message in (("{", "not a readable JSON"), ('{"x": 1}', "no 'components'"),
                             ('{"components": {"7": {"name": "a"}}}', "not in 0..2"),
                             ('{"weights": "0000", "components": {}}', "other")):
        bad.write_text(content)
        assert main(["predict", str(run), str(ds), str(tmp_path / "p.parquet"), "--names", str(bad),
                     "--quiet"]) == 2
        err = capsys.readouterr().err
        assert message in err or (message == "other" and "weights" in err), err
        assert err.count("\n") == 1
    with pytest.raises(SystemExit):
        main(["predict", "--names"])


def test_explorer_filters_leave_out_missing_values_and_filter_booleans(browser, tmp_path_factory, tmp_path):  # noqa: F811
    import numpy as np
    import pandas as pd

    from astrovader.data.dataset import Dataset, write_dataset

    run, ds = tiny_run(tmp_path_factory)
    imgs = Dataset(ds).load()[:80]
    flux = np.where(np.arange(80) % 3 == 0, np.arange(80) * 10.0, np.nan)  # a value only where there is a companion
    write_dataset(tmp_path / "ds", imgs, pd.DataFrame({"id": np.arange(80), "companion_flux": flux,
                                                       "has_companion": np.arange(80) % 3 == 0,
                                                       "kind": np.where(np.arange(80) % 2 == 0, "a", "b")}))
    out = tmp_path / "explore"
    from astrovader.analysis.explorer import write_explorer

    page = write_explorer(run, tmp_path / "ds", out / "explorer.html")
    browser.get(page.resolve().as_uri())
    _wait(browser, "return document.body.dataset.ready === 'yes'")
    count = "return Bokeh.documents[0].get_model_by_name('shown').booleans.filter(Boolean).length"
    assert browser.execute_script(count) == 80  # no split column: everything shown
    browser.execute_script("""
        document.getElementById('f-column').value = 'col_companion_flux';
        const lo = document.getElementById('f-min'); lo.value = '0'; lo.dispatchEvent(new Event('input'));""")
    assert browser.execute_script(count) == 27  # the 53 galaxies without a value are in no range
    browser.execute_script("""
        document.getElementById('f-min').value = '';
        const c = document.getElementById('f-cat'); c.value = 'cat_has_companion';
        c.dispatchEvent(new Event('input'));
        const v = document.getElementById('f-cat-value'); v.value = 'False'; v.dispatchEvent(new Event('input'));""")
    assert browser.execute_script(count) == 53
    assert browser.execute_script("return document.getElementById('f-count').textContent") == "53"
    assert browser.execute_script(
        "return Array.from(document.getElementById('f-cat').options).map(o => o.text)") == ["none", "has_companion",
                                                                                             "kind"]
    errors = [e for e in browser.get_log("browser") if e.get("level") in ("SEVERE", "ERROR")]
    assert not errors, f"console errors: {errors}"
