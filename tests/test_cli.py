"""The command line, driven in-process with typer's CliRunner."""
import pytest
from typer.testing import CliRunner

from numbaconv.gradcheck import CheckResult
from numbaconv_cli.main import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """Tables render at 200 columns so assertions do not depend on wrapping."""
    from numbaconv_cli import console as c

    monkeypatch.setattr(c.console, "width", 200)
    monkeypatch.setattr(c.err_console, "width", 200)


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "gradcheck" in result.output


def test_gradcheck_reference_passes():
    result = runner.invoke(app, ["gradcheck", "--backend", "reference", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "Conv_BatchNorm_ReLU_Pool" in result.output
    assert "FAIL" not in result.output
    assert "gradient checks passed" in result.output


def test_gradcheck_exits_1_when_a_check_fails(monkeypatch):
    import numbaconv.gradcheck as gc

    monkeypatch.setattr(gc, "check_backend", lambda *a: [CheckResult("Conv", "dx", 1e-3, 1e-8),
                                                          CheckResult("ReLU", "dx", 1e-12, 1e-8)])
    result = runner.invoke(app, ["gradcheck"])
    assert result.exit_code == 1
    assert "FAIL" in result.output and "1 of 2 gradient checks failed" in result.output


@pytest.mark.parametrize("args", [["gradcheck", "--backend", "gpu"], ["gradcheck", "--dtype", "float16"]])
def test_gradcheck_rejects_bad_options(args):
    result = runner.invoke(app, args)
    assert result.exit_code == 2
