"""09: an acl_file as the MQTT interoperability suites configure it: anonymous clients may
do everything except subscribe to test/nosubscribe. Its own small stack (the shared one
runs without an ACL file)."""
import os

import pytest

import lk


@pytest.fixture(scope="module")
def acl_stack(tmp_path_factory):
    services = ["redis", "router", "session-store", "auth", "mqtt-frontend-1"]
    if not all(lk.built(s) for s in ("router", "session-store", "auth", "mqtt-frontend")):
        pytest.skip("daemons not built")
    acl = tmp_path_factory.mktemp("acl") / "acl"
    acl.write_text("topic deny test/nosubscribe\ntopic readwrite #\n")
    s = lk.Stack(services=services)
    s.env["LATCHKEY_ACL_FILE"] = str(acl)
    try:
        s.start_all()
        yield s
    finally:
        s.destroy()


def test_nosubscribe_refused(acl_stack):
    for proto in (lk.MQTTv311, lk.MQTTv5):
        with lk.paho_client(acl_stack, "acl-ns-%d" % proto, protocol=proto) as c:
            assert c.subscribe("test/nosubscribe", 1) == [0x80]


def test_hash_still_granted_but_denied_topic_filtered(acl_stack):
    with lk.paho_client(acl_stack, "acl-all") as c, lk.paho_client(acl_stack, "acl-pub") as p:
        assert c.subscribe("#", 1) == [1]
        p.publish("test/nosubscribe", "hidden", qos=1)
        p.publish("test/other", "seen", qos=1)
        msgs = c.wait_for(1)
        assert msgs[0].topic == "test/other"
        c.messages.expect_none(0.5)
