"""The command line's options and the API's settings classes say the same thing: an option named after a
field has that field's default, and a bad value is reported under the option's name."""
from __future__ import annotations

import dataclasses

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
            if field.name == "ignore":  # a repeatable option: nothing given is the empty tuple
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
