"""The error contract: user errors are one line (exit 2); anything else is a bug with its traceback."""

from __future__ import annotations

import numpy as np
import pytest

from astrovader import errors
from astrovader.cli import main


def _numpy_fails(*args, **kwargs):
    np.zeros((2, 2)).reshape(3)  # a ValueError raised inside numpy, as a real bug would


def test_a_numpy_value_error_is_a_bug_with_its_traceback(monkeypatch, capsys):
    monkeypatch.setattr("astrovader.pretrained.names", _numpy_fails)
    assert main(["presets"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "reshape" in err
    assert err.strip().splitlines()[-1].startswith("astrovader presets: this is a bug in astrovader")


def test_debug_re_raises_a_bug(monkeypatch):
    monkeypatch.setattr("astrovader.pretrained.names", _numpy_fails)
    with pytest.raises(ValueError, match="reshape"):
        main(["--debug", "presets"])


@pytest.mark.parametrize("cls", [errors.InputError, errors.ConfigError, errors.DatasetError, errors.RunError])
def test_a_user_error_is_one_line(monkeypatch, capsys, cls):
    def fails(*args, **kwargs):
        raise cls("data/dataset.json: damaged\n  run `astrovader check data/` to see what")

    monkeypatch.setattr("astrovader.pretrained.names", fails)
    assert main(["presets"]) == 2
    err = capsys.readouterr().err
    assert err == "astrovader presets: error: data/dataset.json: damaged run `astrovader check data/` to see what\n"


def test_every_user_error_is_an_astrovader_error_and_keeps_its_builtin_base():
    from astrovader.config import ConfigError
    from astrovader.data.catalogs import CatalogError
    from astrovader.data.dataset import DatasetError
    from astrovader.data.decode import ImageReadError
    from astrovader.data.limits import InputLimitError
    from astrovader.data.locks import LockedError
    from astrovader.data.store import ImageStoreError
    from astrovader.runs import RunError

    for cls in (ConfigError, CatalogError, DatasetError, ImageReadError, InputLimitError, ImageStoreError, RunError):
        assert issubclass(cls, errors.AstrovaderError) and issubclass(cls, ValueError)
    assert issubclass(LockedError, errors.AstrovaderError) and issubclass(LockedError, OSError)


def test_a_renamed_config_key_is_read_with_a_one_line_warning(tmp_path, capsys):
    old = tmp_path / "old.toml"
    old.write_text("[model]\nn_clusters = 4\n")  # as config.toml files written before the rename hold it
    assert main(["summary", "--config", str(old)]) == 0
    out, err = capsys.readouterr()
    assert "K + 2*K*J = 4 + " in out
    assert err == "astrovader: warning: config key model.n_clusters is renamed model.n_components; read as that\n"
