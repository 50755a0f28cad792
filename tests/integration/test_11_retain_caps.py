"""11: caps on retained messages (max_retained_messages, max_retained_size): past them a
retained publish is still delivered to live subscribers but not kept. Its own stack."""
import pytest

import lk


@pytest.fixture(scope="module")
def caps_stack():
    if not all(lk.built(s) for s in ("router", "session-store", "auth", "mqtt-frontend")):
        pytest.skip("daemons not built")
    s = lk.Stack(services=["redis", "router", "session-store", "auth", "mqtt-frontend-1"])
    s.env["LATCHKEY_MAX_RETAINED_MESSAGES"] = "40"
    s.env["LATCHKEY_MAX_RETAINED_SIZE"] = "100"
    try:
        s.start_all()
        yield s
    finally:
        s.destroy()


def test_oversize_retained_delivered_not_kept(caps_stack):
    with lk.paho_client(caps_stack, "cap-live") as live:
        live.subscribe("caps/big", 1)
        lk.mosquitto_pub(caps_stack, "caps/big", "x" * 200, qos=1, retain=True)
        assert len(live.wait_for(1)[0].payload) == 200
    with lk.paho_client(caps_stack, "cap-late") as late:
        late.subscribe("caps/big", 1)
        late.messages.expect_none(0.7)


def test_count_cap_and_replacement(caps_stack):
    for i in range(60):
        lk.mosquitto_pub(caps_stack, "caps/n/%d" % i, "v%d" % i, qos=1, retain=True)
    with lk.paho_client(caps_stack, "cap-count") as c:
        c.subscribe("caps/n/#", 1)
        kept = {m.topic for m in c.messages.drain(1.0, timeout=10)}
    assert 0 < len(kept) <= 40
    # a kept topic can always be replaced, even at the cap
    topic = sorted(kept)[0]
    lk.mosquitto_pub(caps_stack, topic, "replaced", qos=1, retain=True)
    with lk.paho_client(caps_stack, "cap-count2") as c:
        c.subscribe(topic, 1)
        assert c.messages.get().text == "replaced"
