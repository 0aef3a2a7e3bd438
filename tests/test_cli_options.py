"""The command line's options and the API's settings classes say the same thing: an option named after a
field has that field's default, and a bad value is reported under the option's name."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import typer

from compress1img import DistillConfig, PruneConfig, PTQConfig, QATConfig, RunConfig
from compress1img.cli import app
from compress1img.cli.options import build, flag
from compress1img.errors import InputError

COMMAND = typer.main.get_command(app)
# What each command builds from its options; quantize trains with QATConfig's own loop settings.
SETTINGS = {
    "distill": [DistillConfig(), RunConfig()],
    "prune": [DistillConfig(), RunConfig(), PruneConfig()],
    "quantize": [QATConfig().training, RunConfig(), QATConfig(), PTQConfig()],
    "compress": [DistillConfig(), RunConfig(), PruneConfig(), QATConfig(), PTQConfig()],
}


@pytest.mark.parametrize("command", sorted(SETTINGS))
def test_an_option_named_after_a_settings_field_has_the_fields_default(command):
    options = {param.name: param for param in COMMAND.commands[command].params}
    compared = 0
    for settings in SETTINGS[command]:
        for field in dataclasses.fields(settings):
            if field.name not in options or field.name == "training":
                continue
            default = getattr(settings, field.name)
            given = options[field.name].default
            if field.name in ("ignore", "keep_float"):  # repeatable options: nothing given is the empty tuple
                given = tuple(given or ())
            assert given == default, f"{command} {flag(field.name)} defaults to {given!r}, {type(settings).__name__}." \
                                     f"{field.name} to {default!r}"
            assert flag(field.name) in options[field.name].opts
            compared += 1
    assert compared >= 8


def test_build_takes_the_options_that_name_fields_and_reports_under_the_options_name():
    params = {"steps": 3, "lr": 0.5, "sparsity": 0.2, "not_a_field": object()}
    assert build(DistillConfig, params) == DistillConfig(steps=3, lr=0.5)
    with pytest.raises(InputError, match=r"^--batch-size must be at least 2 \(got 1\)$"):
        build(DistillConfig, {"batch_size": 1})
    with pytest.raises(InputError, match=r"^--qat-steps must be at least 1 \(got 0\)$"):
        build(DistillConfig, {}, {"steps": "--qat-steps"}, steps=0)
    with pytest.raises(InputError, match=r"^--drop-blocks needs --mode structured"):
        build(PruneConfig, {"mode": "unstructured", "drop_blocks": 1})


def printed_config(capsys, *args) -> str:
    """What `compress1img ARGS --print-config` prints (stdout), in this process."""
    from compress1img.cli import main

    main([str(a) for a in (*args, "--print-config")])
    return capsys.readouterr().out


@pytest.mark.parametrize("args", [
    ("prune", "model.th", "--arch", "cifar_resnet56", "--sparsity", "0.3", "--ignore", "fc", "--image", "china",
     "--image", "coffee", "--steps", "7", "--mix", "cutmix-per-image", "--mix-alpha", "1", "--no-amp"),
    ("quantize", "model.th", "--method", "ptq", "--calibration-size", "64"),
    ("compress", "model.th", "--qat-steps", "3", "--qat-lr", "2e-6", "--drop-blocks", "1"),
    ("distill", "--teacher", "model.th", "--student", "cifar_resnet20", "--mix", "mixup", "--out", "runs/r20"),
], ids=lambda args: args[0])
def test_print_config_prints_a_recipe_that_resolves_to_the_same_settings(args, capsys, tmp_path):
    import tomllib

    printed = printed_config(capsys, *args)
    recipe = tomllib.loads(printed)
    given = dict(zip(args[1::2], args[2::2])) if args[0] == "distill" else dict(zip(args[2::2], args[3::2]))
    for option, value in given.items():  # what the command line gave is in the recipe, as its type
        if option not in ("--image", "--ignore", "--no-amp"):
            assert str(recipe[option[2:].replace("-", "_")]) == value or \
                float(recipe[option[2:].replace("-", "_")]) == float(value), option
    (tmp_path / "printed.toml").write_text(printed)
    assert printed_config(capsys, args[0], "--recipe", tmp_path / "printed.toml") == printed
    assert not (tmp_path / "runs").exists() and not Path("runs/r20").exists()  # no work was done


def test_print_config_shows_the_recipe_overridden_by_the_command_line_and_checks_the_values(capsys, cli, tmp_path):
    import tomllib

    (tmp_path / "r.toml").write_text('sparsity = 0.7\nsteps = 40\nignore = "layer1.0"\n')
    recipe = tomllib.loads(printed_config(capsys, "prune", "m.th", "--recipe", tmp_path / "r.toml", "--steps", "9"))
    assert (recipe["sparsity"], recipe["steps"], recipe["ignore"], recipe["model"]) == (0.7, 9, ["layer1.0"], "m.th")
    assert "print_config" not in recipe and "recipe" not in recipe
    assert cli("prune", "m.th", "--steps", "0", "--print-config") == (2, ["error: --steps must be at least 1 (got 0)"])
    assert cli("prune", "m.th", "--drop-blocks", "1", "--drop-block", "layer1.1", "--print-config") == (
        2, ["error: --drop-block names the blocks that --drop-blocks would choose: give one or the other"])


@pytest.mark.parametrize("command", ["prune", "quantize", "compress", "bench"])
def test_the_timing_options_default_to_latency_configs_defaults(command):
    from compress1img.cli.options import batch_sizes, latency_config
    from compress1img.latency import LatencyConfig

    options = {param.name: param.default for param in COMMAND.commands[command].params}
    if command == "bench":
        timing = LatencyConfig(threads=options["threads"], batches=batch_sizes(options["batches"], "--batches"),
                               rounds=options["repeats"])
    else:
        timing = latency_config(options)
    assert timing == LatencyConfig()
