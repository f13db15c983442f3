"""The webhook message: Slack-compatible, escaped, complete."""

from __future__ import annotations

from aiperimeter.watch.alerts import Alert
from aiperimeter.watch.deliver import slack_message


def test_client_chosen_text_is_escaped_for_slack_and_the_alert_is_whole() -> None:
    alert = Alert(
        id="a1", time=1.0, kind="new_model", severity="high", key="k1", client="203.0.113.9",
        summary="key k1 asked for a model it never used: <!channel> <https://evil.example|Resume> & co",
        baseline="models used: llama3", observed="model <!here>", evidence=("r1", "r2"), actions=("blocked x",),
    )  # fmt: skip
    message = slack_message(alert, "http://127.0.0.1:8788/admin/dashboard")
    text = message["text"]
    assert "<!channel>" not in text and "<!here>" not in text and "<https://" not in text
    assert "&lt;!channel&gt; &lt;https://evil.example|Resume&gt; &amp; co" in text
    assert "*HIGH*" in text and "usual: models used: llama3" in text and "done: blocked x" in text
    assert "audit records: r1, r2" in text and text.endswith("dashboard: http://127.0.0.1:8788/admin/dashboard")
    assert message["alert"] == alert.to_dict()
