"""The README opens with exactly two set-up commands, and CI runs the second one as written."""
import re

from .conftest import ROOT


def setup_commands():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [l for l in block.splitlines() if l.strip()]


def test_two_commands_first():
    text = (ROOT / "README.md").read_text()
    assert text.index("```bash") < text.index("\n## ")  # the block comes before any section
    cmds = setup_commands()
    assert len(cmds) == 2
    assert cmds[0].endswith("pip install -e . && normtrain")
    assert "pytest" in cmds[1]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci/run").read_text()
    assert setup_commands()[1] in ci.splitlines()


def test_readme_lists_every_method_network_and_knob():
    """Everything a user can pick is in the README; a miss is named in one line, with where it goes."""
    from normtrain import models, norms
    text = (ROOT / "README.md").read_text()
    missing = [f"method `{n}`" for n in norms.names() if f"`{n}`" not in text]
    missing += [f"network `{n}`" for n in models.names() if f"`{n}`" not in text]
    missing += [f"knob `{k}` ({owner})" for k, owner in norms.options_class()._owners.items()
                if not re.search(rf"`(norm\.)?{k}\b", text)]
    assert not missing, (f"README.md does not mention {', '.join(missing)}: give a method a row, with its knobs, "
                         f"in '## Normalization methods', a network a mention in '## Networks'")


def _scenario_table():
    import importlib.util
    spec = importlib.util.spec_from_file_location("scenario_table", ROOT / "tools/scenario_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_scenario_table_is_generated_from_the_results():
    """The README's scenario table is tools/scenario_table.py's rendering of docs/scenarios/verdicts.json."""
    import json
    tool = _scenario_table()
    verdicts = json.loads((ROOT / "docs/scenarios/verdicts.json").read_text())
    from normtrain import scenarios
    assert sorted(verdicts) == sorted(scenarios.names())  # a new scenario needs a run at its defaults
    for name, e in verdicts.items():
        assert e["non_default_params"] == {}, f"{name}: the README must show results at the defaults"
        assert all((ROOT / p).is_file() for p in e["plots"]), name
    text = (ROOT / "README.md").read_text()
    assert tool.readme_block(text) == tool.render(verdicts, tool.summaries())


def test_scenario_table_render_format():
    tool = _scenario_table()
    sums = {"a": "Claim a | with a pipe.", "b": "Claim b.", "c": "Claim c."}
    verdicts = {
        "a": {"state": "reproduced", "headline": "x = 1", "non_default_params": {}, "runtime_s": 12.3,
              "device": "cpu", "plots": ["docs/scenarios/a.png"]},
        "b": {"state": "inconclusive", "headline": "y = 2", "non_default_params": {"steps": 5}, "runtime_s": 1.0,
              "device": "cpu", "plots": ["docs/scenarios/b.png", "docs/scenarios/b-extra.png"]},
    }
    out = tool.render(verdicts, sums)
    rows = [l for l in out.splitlines() if l.startswith("| `")]
    assert len(rows) == 3
    for row in rows:  # five columns, escaped pipes do not split a cell
        assert len(re.split(r"(?<!\\)\|", row.strip())) == 7
    assert "| reproduced | x = 1 |" in rows[0] and "| **inconclusive** | y = 2 (at `steps=5`) |" in rows[1]
    assert "not run yet" in rows[2]
    assert "[b-extra](docs/scenarios/b-extra.png)" in out
    verdicts["c"] = dict(verdicts["b"], state="n/a", headline="z = 3", non_default_params={})
    row_c = [l for l in tool.render(verdicts, sums).splitlines() if l.startswith("| `c`")][0]
    assert "| **n/a** | z = 3 |" in row_c and "not reproduced" not in row_c
    assert tool.plot_names("x", ["loss_curves.png", "output_norms.png"]) == ["x.png", "x-output-norms.png"]
    assert tool.state_of({"reproduced": False}) == "not reproduced"  # an entry of the old schema


def test_exit_code_table_matches_the_code_and_the_help():
    """The README's exit codes are exactly normtrain's (errors.EXIT_*), each also in `normtrain --help`."""
    from normtrain import cli, errors
    text = (ROOT / "README.md").read_text()
    section = text[text.index("#### What normtrain guarantees"):text.index("## Distributed training")]
    table = section[section.index("| code | meaning |"):]
    documented = {int(m) for m in re.findall(r"^\| (\d+) \|", table, re.M)}
    defined = {v for k, v in vars(errors).items() if k.startswith("EXIT_")}
    assert documented == defined
    help_text = cli.EPILOG
    for code in defined:
        assert re.search(rf"\b{code} ", help_text), code
    assert "What is **not** guaranteed" in section and "flock" in section and "fsync" in section
