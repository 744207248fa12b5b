"""Command lines in what the sender wrote now."""

from __future__ import annotations

from csm_router.core.commands import Command, find_command


def test_command_on_a_line_of_its_own_any_case() -> None:
    assert find_command("Thanks!\n  #Close  \n") == Command("close")
    assert find_command("#REASSIGN <Bob@Acme.com>") == Command("reassign", "bob@acme.com")
    assert find_command("#success") == Command("success")


def test_words_in_a_sentence_are_not_commands() -> None:
    assert find_command("I will #close this later") is None
    assert find_command("#closed already") is None
    assert find_command("#supporting") is None


def test_first_command_wins() -> None:
    assert find_command("#support\n#close\n") == Command("support")
