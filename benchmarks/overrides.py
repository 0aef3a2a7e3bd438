"""NAME=VALUE settings on a benchmark's command line, applied to the package's settings classes.

    heal = with_overrides(DistillConfig(steps=1000), options)   # takes out of `options` what it uses

A value is converted to the type of the field's current value (0/1 for booleans; where it is None, a number:
int if it reads as one, else float).
"""
from __future__ import annotations

import dataclasses


def parse(pairs: list[str]) -> dict[str, str]:
    """["lr=0.001", "amp=0"] -> {"lr": "0.001", "amp": "0"}."""
    bad = [pair for pair in pairs if "=" not in pair]
    if bad:
        raise SystemExit(f"settings are NAME=VALUE, not {', '.join(bad)}")
    return dict(pair.split("=", 1) for pair in pairs)


def with_overrides(config, options: dict[str, str]):
    """`config` with the options that name its fields, which are taken out of `options`."""
    changes = {}
    for field in dataclasses.fields(config):
        if field.name in options:
            current = getattr(config, field.name)
            value = options.pop(field.name)
            if current is None:
                changes[field.name] = int(value) if value.lstrip("-").isdigit() else float(value)
            else:
                changes[field.name] = bool(int(value)) if type(current) is bool else type(current)(value)
    return dataclasses.replace(config, **changes)
