"""07: Last Will: published when a client drops off, not after a clean DISCONNECT."""
import pytest

import lk


@pytest.fixture(autouse=True)
def _need(stack):
    stack.require("router", "session-store", "auth", "mqtt-frontend-1")


def test_will_on_abnormal_close(stack):
    with lk.paho_client(stack, "will-watch") as w:
        w.subscribe("/lock7/statu", 1)
        dev = lk.paho_client(stack, "lock7", will=dict(topic="/lock7/statu", payload="-2", qos=1))
        dev.close()
        m = w.messages.get(timeout=5)
        assert (m.topic, m.text) == ("/lock7/statu", "-2")


def test_no_will_on_disconnect(stack):
    with lk.paho_client(stack, "will-watch2") as w:
        w.subscribe("/lock8/statu", 1)
        dev = lk.paho_client(stack, "lock8", will=dict(topic="/lock8/statu", payload="-2", qos=1))
        dev.disconnect()
        w.messages.expect_none(0.7)
