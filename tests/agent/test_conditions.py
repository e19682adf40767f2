"""Success conditions go through the shared expression module."""

from __future__ import annotations

from trellis_agent.conditions import evaluate


def test_a_whole_expression_decides_by_its_truth() -> None:
    assert evaluate("$(response.status in [200, 201])$", {"response": {"status": 201}}).holds
    assert not evaluate("$(exit_code == 0)$", {"exit_code": 2}).holds


def test_a_bare_expression_is_accepted() -> None:
    assert evaluate("response.json.ready", {"response": {"json": {"ready": True}}}).holds


def test_text_around_an_expression_holds_when_it_reads_true() -> None:
    assert evaluate(" $(exit_code < 2)$ ", {"exit_code": 1}).holds


def test_an_unknown_name_is_an_error_value_not_an_exception() -> None:
    result = evaluate("$(respnse.status == 200)$", {"response": {"status": 200}})
    assert not result.holds
    assert "respnse" in result.error
