"""12: direct QoS 0 routing (lk.Route): frontends cache the router's answer for a topic and
hand QoS 0 messages to the subscriber's frontend themselves. What must still hold: a
client that got SUBACK receives what is published after it, UNSUBACK stops delivery,
order per publisher and topic survives route changes, No Local and shared subscriptions
behave as through the router, and a resumed session receives on its new frontend."""
import glob
import json
import os
import subprocess
import threading
import time

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

import lk

pytestmark = pytest.mark.usefixtures("stack")
FRONTENDS = ("mqtt-frontend-1", "mqtt-frontend-2")


@pytest.fixture(autouse=True)
def _need(stack):
    stack.require("router", "session-store", "auth", *FRONTENDS)
    # a starting router holds publishes until its index is rebuilt: "before" would not be
    for r in stack.names("router"):
        stack.wait_log(r, "ready (", timeout=15)


def frontend_of(stack, client):
    """The s6 service whose process holds this paho client's connection (from ss)."""
    port = client.paho.socket().getsockname()[1]
    out = subprocess.run(["ss", "-Htnp", "state", "established",
                          "( sport = :%d and dport = :%d )" % (stack.mqtt_port, port)],
                         capture_output=True, text=True, timeout=10).stdout
    for svc in FRONTENDS:
        if "pid=%d," % stack.svc_pid(svc) in out:
            return svc
    raise AssertionError("no frontend holds port %d: %r" % (port, out))


def client_on(stack, cid, svc, protocol=lk.MQTTv311, clean=True, will=None, tries=40):
    """A connected paho client whose connection landed on frontend svc (SO_REUSEPORT
    spreads connections by address: reconnect until one lands there)."""
    for i in range(tries):
        c = lk.paho_client(stack, cid, protocol=protocol, clean_session=clean, will=will)
        if frontend_of(stack, c) == svc:
            return c
        c.disconnect()
    raise AssertionError("%s: never landed on %s in %d tries" % (cid, svc, tries))


PAIRS = [(a, b) for a in FRONTENDS for b in FRONTENDS]


def fence(pub):
    """Returns once the broker has read everything pub sent before (paho leaves Nagle on,
    so QoS 0 packets may sit in the kernel a while): a QoS 1 PUBACK comes after them."""
    pub.publish("direct/fence", "f", qos=1)


@pytest.mark.parametrize("pub_fe,sub_fe", PAIRS)
def test_subscriber_after_cached_route_gets_next_message(stack, pub_fe, sub_fe):
    tag = "%s-%s" % (pub_fe[-1], sub_fe[-1])
    topic = "direct/late/%s" % tag
    with client_on(stack, "dl-pub-" + tag, pub_fe) as pub:
        # no subscriber yet: the publisher's frontend caches an empty route
        for i in range(5):
            pub.publish(topic, "before%d" % i)
        fence(pub)
        with client_on(stack, "dl-sub-" + tag, sub_fe) as sub:
            assert sub.subscribe(topic, 0) == [0]
            # SUBACK came after every frontend dropped its routes: nothing is missed
            for i in range(50):
                pub.publish(topic, "m%d" % i)
            msgs = sub.wait_for(50, timeout=10)
            assert [m.text for m in msgs] == ["m%d" % i for i in range(50)]
            sub.messages.expect_none(0.3)


@pytest.mark.parametrize("pub_fe,sub_fe", PAIRS)
def test_unsubscribe_stops_cached_route(stack, pub_fe, sub_fe):
    tag = "%s-%s" % (pub_fe[-1], sub_fe[-1])
    topic = "direct/unsub/%s" % tag
    with client_on(stack, "du-pub-" + tag, pub_fe) as pub, \
            client_on(stack, "du-sub-" + tag, sub_fe) as sub:
        sub.subscribe(topic, 0)
        for i in range(20):
            pub.publish(topic, "m%d" % i)
        assert len(sub.wait_for(20)) == 20
        sub.unsubscribe(topic)
        for i in range(20):
            pub.publish(topic, "after%d" % i)
        # a QoS 0 round trip from the same publisher to its own frontend: after the others
        with client_on(stack, "du-fence-" + tag, pub_fe) as f:
            f.subscribe(topic + "/fence", 0)
            pub.publish(topic + "/fence", "f")
            f.wait_for(1)
        sub.messages.expect_none(0.3)


def test_order_kept_while_routes_change(stack):
    """One publisher streams QoS 0 while other clients subscribe and unsubscribe the same
    topic (plainly, with a shared subscription, and on both frontends): every change
    flushes the cached routes, and the subscriber on the other frontend still sees every
    message in order."""
    topic = "direct/order"
    n = 4000
    with client_on(stack, "do-pub", "mqtt-frontend-1") as pub, \
            client_on(stack, "do-sub", "mqtt-frontend-2") as sub, \
            client_on(stack, "do-churn1", "mqtt-frontend-1") as c1, \
            client_on(stack, "do-churn2", "mqtt-frontend-2") as c2:
        sub.subscribe(topic, 0)
        stop = threading.Event()
        errors = []

        def churn():
            try:
                filters = [(c1, topic), (c2, topic), (c1, "$share/g/" + topic),
                           (c2, "direct/#")]
                while not stop.is_set():
                    for c, f in filters:
                        c.subscribe(f, 0)
                        c.unsubscribe(f)
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        t = threading.Thread(target=churn)
        t.start()
        try:
            for i in range(n):
                pub.publish(topic, str(i), wait=(i % 200 == 199))
                if i % 200 == 199:
                    time.sleep(0.01)
        finally:
            stop.set()
            t.join(30)
        assert not errors
        got = [int(m.text) for m in sub.wait_for(n, timeout=30)]
        assert got == list(range(n))
        sub.messages.expect_none(0.3)


def test_no_local_with_direct_routes(stack):
    topic = "direct/nolocal"
    opts_nl = SubscribeOptions(qos=0, noLocal=True)
    with client_on(stack, "dn-a", "mqtt-frontend-1", protocol=lk.MQTTv5) as a, \
            client_on(stack, "dn-b", "mqtt-frontend-1", protocol=lk.MQTTv5) as b, \
            client_on(stack, "dn-c", "mqtt-frontend-2", protocol=lk.MQTTv5) as c:
        a.subscribe(topic, options=opts_nl)
        c.subscribe(topic, options=SubscribeOptions(qos=0))
        for i in range(10):
            a.publish(topic, "from-a%d" % i)
            b.publish(topic, "from-b%d" % i)
        got_c = [m.text for m in c.wait_for(20)]
        assert [t for t in got_c if t.startswith("from-a")] == ["from-a%d" % i for i in range(10)]
        assert [t for t in got_c if t.startswith("from-b")] == ["from-b%d" % i for i in range(10)]
        got_a = [m.text for m in a.wait_for(10)]
        assert got_a == ["from-b%d" % i for i in range(10)]  # never its own
        a.messages.expect_none(0.3)


def test_subscription_identifiers_on_direct_routes(stack):
    topic = "direct/subid"
    with client_on(stack, "di-pub", "mqtt-frontend-1") as pub, \
            client_on(stack, "di-sub", "mqtt-frontend-2", protocol=lk.MQTTv5) as sub:
        sp = Properties(PacketTypes.SUBSCRIBE)
        sp.SubscriptionIdentifier = 7
        sub.subscribe(topic, 0, properties=sp)
        for i in range(5):
            pub.publish(topic, "m%d" % i)
        msgs = sub.wait_for(5)
        assert [m.text for m in msgs] == ["m%d" % i for i in range(5)]
        for m in msgs:
            assert m.properties.SubscriptionIdentifier == [7]


def test_shared_subscription_and_plain_together(stack):
    """A topic with a shared group is not cached (the router picks the member each time),
    yet plain subscribers still get every message once, in order."""
    topic = "direct/shared"
    with client_on(stack, "dsh-pub", "mqtt-frontend-1") as pub, \
            client_on(stack, "dsh-m1", "mqtt-frontend-1") as m1, \
            client_on(stack, "dsh-m2", "mqtt-frontend-2") as m2, \
            client_on(stack, "dsh-plain", "mqtt-frontend-2") as plain:
        m1.subscribe("$share/grp/" + topic, 0)
        m2.subscribe("$share/grp/" + topic, 0)
        plain.subscribe(topic, 0)
        for i in range(40):
            pub.publish(topic, str(i))
        got = [int(m.text) for m in plain.wait_for(40)]
        assert got == list(range(40))
        shared = m1.messages.drain(quiet=0.5) + m2.messages.drain(quiet=0.5)
        assert sorted(int(m.text) for m in shared) == list(range(40))  # each once, to one member


def test_resumed_session_receives_on_its_new_frontend(stack):
    topic = "direct/resume"
    with client_on(stack, "dr-pub", "mqtt-frontend-1") as pub:
        s = client_on(stack, "dr-sub", "mqtt-frontend-1", clean=False)
        s.subscribe(topic, 0)
        for i in range(5):
            pub.publish(topic, "a%d" % i)
        assert [m.text for m in s.wait_for(5)] == ["a%d" % i for i in range(5)]
        s.disconnect()
        # back on the other frontend, the session (and its subscription) with it
        s2 = client_on(stack, "dr-sub", "mqtt-frontend-2", clean=False)
        try:
            assert s2.session_present
            for i in range(5):
                pub.publish(topic, "b%d" % i)
            assert [m.text for m in s2.wait_for(5)] == ["b%d" % i for i in range(5)]
        finally:
            s2.disconnect()
            c = lk.paho_client(stack, "dr-sub", clean_session=True)
            c.disconnect()


def test_retained_and_plain_qos0_keep_order(stack):
    """Retained QoS 0 messages go through the router (it keeps them); plain ones on the
    same topic may go directly: the subscriber still sees them in publish order, and the
    router keeps the last retained one."""
    topic = "direct/retained"
    with client_on(stack, "drt-pub", "mqtt-frontend-1") as pub, \
            client_on(stack, "drt-sub", "mqtt-frontend-2") as sub:
        sub.subscribe(topic, 0)
        for i in range(200):
            pub.publish(topic, str(i), retain=(i % 7 == 0), wait=(i == 199))
        msgs = sub.wait_for(200)
        assert [int(m.text) for m in msgs] == list(range(200))
        assert not any(m.retain for m in msgs)  # live copies carry no RETAIN (3.1.1)
        with client_on(stack, "drt-late", "mqtt-frontend-1") as late:
            late.subscribe(topic, 0)
            m = late.wait_for(1)[0]
            assert (m.text, m.retain) == ("196", True)
        pub.publish(topic, "", retain=True)  # clear it


def test_qos0_will_after_direct_messages(stack):
    topic = "direct/will"
    with client_on(stack, "dw-sub", "mqtt-frontend-2") as sub:
        sub.subscribe(topic, 0)
        dev = client_on(stack, "dw-dev", "mqtt-frontend-1",
                        will=dict(topic=topic, payload="gone", qos=0))
        for i in range(100):
            dev.publish(topic, str(i), wait=(i == 99))
        dev.paho.socket().close()   # no DISCONNECT: the will goes out
        msgs = [m.text for m in sub.wait_for(101)]
        assert msgs == [str(i) for i in range(100)] + ["gone"]
        dev.paho.loop_stop()


def test_frontend_log_holds_direct_messages_and_replays(stack):
    """Cached QoS 0 messages never reach the router: the publisher's frontend records
    every one in its message log, and replaying that log through the router delivers
    them (the replay asks the router to deliver, not to resolve)."""
    topic = "direct/log"
    with client_on(stack, "dlg-pub", "mqtt-frontend-1") as pub, \
            client_on(stack, "dlg-sub", "mqtt-frontend-2") as sub:
        sub.subscribe(topic, 0)
        for i in range(30):
            pub.publish(topic, "logged-%d" % i)
        assert len(sub.wait_for(30)) == 30
        exe = os.path.join(stack.build, "bin", "latchkey")
        segs = sorted(glob.glob(os.path.join(stack.run_dir, "msglog", "fe-1-*.lkm")))
        # the frontend's log is written at its turn ends: wait for the last one
        def logged():
            out = subprocess.run([exe, "log", "dump"] + segs, capture_output=True, text=True,
                                 timeout=30, env=stack.env).stdout
            got = []
            for line in out.splitlines():
                env = json.loads(line)["envelope"] or {}
                for it in env.get("publish", {}).get("items", []):
                    if it["msg"].get("topic") == topic:
                        got.append(it["msg"]["payload"])
            return got
        lk.wait_until(lambda: len(logged()) >= 30, 10, what="30 logged publishes")
        assert logged() == ["logged-%d" % i for i in range(30)]
        r = subprocess.run([exe, "log", "replay", "-e", "ipc://%s/ipc/router.ipc" % stack.run_dir,
                            "-b", "publish", "-s", "0"] + segs, capture_output=True, text=True,
                           timeout=60, env=stack.env)
        assert r.returncode == 0, r.stderr
        again = [m.text for m in sub.messages.drain(1.0, timeout=10)]
        assert [t for t in again if t.startswith("logged-")] == ["logged-%d" % i for i in range(30)]


def test_router_restart_while_routes_are_cached(stack):
    """A cached route keeps QoS 0 flowing between frontends while the router restarts; the
    new router's generation empties the caches, so a client subscribing afterwards gets
    what is published after its SUBACK."""
    topic = "direct/router-restart"
    with client_on(stack, "drr-pub", "mqtt-frontend-1") as pub, \
            client_on(stack, "drr-sub", "mqtt-frontend-2") as sub:
        sub.subscribe(topic, 0)
        for i in range(10):
            pub.publish(topic, "a%d" % i)
        assert [m.text for m in sub.wait_for(10)] == ["a%d" % i for i in range(10)]
        router = stack.names("router")[0]
        readies = stack.log(router).count("ready (")
        stack.kill(router)
        # the new router holds publishes until its index is rebuilt
        lk.wait_until(lambda: stack.log(router).count("ready (") > readies, 15,
                      what="the new router ready")
        with client_on(stack, "drr-late", "mqtt-frontend-2") as late:
            late.subscribe(topic, 0)
            for i in range(10):
                pub.publish(topic, "b%d" % i)
            assert [m.text for m in late.wait_for(10)] == ["b%d" % i for i in range(10)]
            assert [m.text for m in sub.wait_for(10)] == ["b%d" % i for i in range(10)]
