"""The remote merge command's pieces that need no hub: its sources and what Ctrl-C does."""
from __future__ import annotations

import click
import pytest

from hub.cli.merge_remote import ask_to_cancel, parse_source
from hub.errors import InvalidMerge


@pytest.mark.parametrize("arg,source", [
    ("alice/a", ("alice/a", "latest", 1.0)),
    ("alice/a@1.0", ("alice/a", "1.0", 1.0)),
    ("alice/a:0.7", ("alice/a", "latest", 0.7)),
    ("alice/a@1.0:-0.25", ("alice/a", "1.0", -0.25)),
    ("alice/a@2:1e-1", ("alice/a", "2", 0.1)),
])
def test_a_source_is_owner_name_at_version_with_a_weight_after_the_last_colon(arg, source):
    parsed = parse_source(arg)
    assert (parsed["adapter"], parsed["version"], parsed["weight"]) == source


@pytest.mark.parametrize("arg,says", [("alice/a:heavy", "not a number"),
                                      ("alice/a:inf", "not a finite number")])
def test_a_weight_that_is_not_a_finite_number_is_refused(arg, says):
    with pytest.raises(InvalidMerge, match=says):
        parse_source(arg)


def test_a_source_that_is_not_owner_name_is_refused():
    with pytest.raises(click.ClickException, match="not owner/name"):
        parse_source("just-a-name:0.5")


def test_ctrl_c_without_a_terminal_never_asks_and_never_cancels():
    def confirm(*args, **kwargs):
        raise AssertionError("asked without a terminal")

    assert ask_to_cancel("m1", interactive=False, confirm=confirm) is False


@pytest.mark.parametrize("answer", [True, False])
def test_ctrl_c_on_a_terminal_asks_and_cancels_only_on_yes(answer):
    asked = []

    def confirm(text, **kwargs):
        asked.append((text, kwargs["default"]))
        return answer

    assert ask_to_cancel("m1", interactive=True, confirm=confirm) is answer
    assert asked == [("Cancel merge m1 on the hub?", False)]


def test_a_second_ctrl_c_at_the_question_leaves_the_merge_running():
    def confirm(*args, **kwargs):
        raise click.Abort()

    assert ask_to_cancel("m1", interactive=True, confirm=confirm) is False
