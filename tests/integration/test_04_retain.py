"""04: retained messages: delivered to new subscribers, replaced, deleted by an empty
payload, and kept across a restart of the whole stack."""
import pytest

import lk


@pytest.fixture(autouse=True)
def _need(stack):
    stack.require("router", "session-store", "auth", "mqtt-frontend-1")


def test_retained_delivered_to_new_subscriber(stack):
    lk.mosquitto_pub(stack, "ret/a", "first", qos=1, retain=True)
    lk.mosquitto_pub(stack, "ret/a", "second", qos=1, retain=True)
    with lk.paho_client(stack, "ret-sub") as sub:
        sub.subscribe("ret/#", 1)
        m = sub.messages.get()
        assert (m.topic, m.text, m.retain) == ("ret/a", "second", True)
        sub.messages.expect_none(0.3)


def test_empty_payload_deletes_retained(stack):
    lk.mosquitto_pub(stack, "ret/del", "x", qos=1, retain=True)
    lk.mosquitto_pub(stack, "ret/del", None, qos=1, retain=True)
    with lk.paho_client(stack, "ret-sub2") as sub:
        sub.subscribe("ret/del", 1)
        sub.messages.expect_none(0.5)


def test_live_message_has_retain_flag_cleared(stack):
    with lk.paho_client(stack, "ret-live") as sub:
        sub.subscribe("ret/live", 0)
        lk.mosquitto_pub(stack, "ret/live", "now", retain=True)
        m = sub.messages.get()
        assert m.text == "now" and not m.retain   # [MQTT-3.3.1-9]
