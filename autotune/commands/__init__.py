"""The `autotune` commands, one module each: `add_arguments(parser)` and `run(args) -> int`.

A command module only parses its arguments, calls the domain modules (which take plain
values and return data) and prints. `autotune.cli` imports a command's module only when
that command runs, so a module here may import its domain's heavy libraries at the top.
"""
