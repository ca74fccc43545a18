"""The command registry: every row resolves to a real function and real config fields, the parser
comes from the table, and `gts --help` imports nothing heavy."""
from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys

import pytest

from gts_megatron.cli import registry


@pytest.mark.parametrize("command", registry.COMMANDS, ids=lambda c: c.name)
def test_every_command_resolves_to_its_function_arguments_and_config_fields(command):
    parser = registry.build_parser(list(command.path))
    assert callable(registry._function(command))
    if command.config:
        fields = registry.config_class(command).model_fields
        assert command.flags == ("*",) or set(command.flags) <= set(fields), command.flags
    with contextlib.redirect_stdout(io.StringIO()) as out, pytest.raises(SystemExit) as exit_:
        parser.parse_args([*command.path, "--help"])
    assert exit_.value.code == 0
    assert command.help.split(":")[0].split()[0] in out.getvalue()
    assert "PydanticUndefined" not in out.getvalue()  # a required field says so, not pydantic's sentinel


def test_command_names_are_unique_and_every_group_is_described():
    names = [c.name for c in registry.COMMANDS]
    assert len(names) == len(set(names))
    groups = {c.path[0] for c in registry.COMMANDS if len(c.path) == 2}
    assert groups == set(registry.GROUPS)
    assert not groups & {c.name for c in registry.COMMANDS if len(c.path) == 1}


def test_parse_fills_only_the_selected_command_and_builds_its_options():
    args = registry.parse(["bench", "stability", "--seeds", "1,2", "--tokens-per-step", "2048", "--data", "d",
                           "--base", "b"])
    assert args.command_entry.name == "bench stability"
    assert args.seeds == [1, 2]
    options = registry.field_options(registry.config_class(args.command_entry), args)
    assert options.tokens_per_step == 2048
    # the other commands are named but have no arguments: their modules were never needed
    assert registry.selected(["probe", "--help"]).name == "probe"
    assert registry.selected(["nonsense"]) is None


def test_an_unknown_flag_is_argparses_usage_error():
    with contextlib.redirect_stderr(io.StringIO()) as err, pytest.raises(SystemExit) as exit_:
        registry.parse(["plan", "--no-such-flag"])
    assert exit_.value.code == 2
    assert "--no-such-flag" in err.getvalue()


def test_gts_help_lists_every_command_without_importing_torch_pydantic_or_a_stage():
    code = ("import contextlib, io, json, sys\n"
            "from gts_megatron.cli import main\n"
            "out = io.StringIO()\n"
            "with contextlib.redirect_stdout(out):\n"
            "    try: main(['--help'])\n"
            "    except SystemExit: pass\n"
            "print(json.dumps({'help': out.getvalue(), 'modules': sorted(sys.modules)}))\n")
    result = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                       check=True).stdout)
    for name in {c.path[0] for c in registry.COMMANDS}:
        assert name in result["help"]
    heavy = [m for m in result["modules"] if m.split(".")[0] in ("torch", "pydantic", "megatron", "ray")
             or m.startswith("gts_megatron.") and m.split(".")[1] not in ("cli", "errors")]
    assert heavy == []
