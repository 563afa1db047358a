"""The CLI's shell: help, version, data commands."""

from __future__ import annotations

from click.testing import CliRunner

from jobs import __version__
from orchestrator.cli import COMMANDS, main


def test_help_lists_every_command():
    res = CliRunner().invoke(main, ["--help"])
    assert res.exit_code == 0, res.output
    for name in COMMANDS:
        assert name in res.output


def test_version():
    res = CliRunner().invoke(main, ["--version"])
    assert res.exit_code == 0 and __version__ in res.output


def test_data_check_real(real_mnist_dir):
    res = CliRunner().invoke(main, ["data", "check", "mnist", "--data-dir", str(real_mnist_dir)], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert "14,262" in res.output and "10,000" in res.output


def test_data_check_missing(tmp_path):
    res = CliRunner().invoke(main, ["data", "check", "mnist", "--data-dir", str(tmp_path)], terminal_width=200)
    assert res.exit_code == 1  # a missing named dataset fails the check (scripts can test it)
    assert "missing" in res.output and "not found under data root" in res.output


def test_data_fetch_without_internet_is_clear(tmp_path, monkeypatch):
    import torchvision.datasets.mnist as tvm

    def no_network(self):
        raise OSError("Name or service not known")

    monkeypatch.setattr(tvm.MNIST, "download", no_network)
    res = CliRunner().invoke(main, ["data", "fetch", "mnist", "--data-dir", str(tmp_path)])
    assert res.exit_code != 0
    assert "could not download mnist" in res.output


def test_data_fetch_toy_has_nothing_to_fetch():
    res = CliRunner().invoke(main, ["data", "fetch", "toy"])
    assert res.exit_code != 0 and "nothing to fetch" in res.output
