/*  interop-paho-c: the Eclipse Paho C client (libpaho-mqtt3c) against a broker.
    `interop-paho-c <port> <3|5>`: connects, subscribes to its own topic at QoS 2,
    publishes QoS 0, 1 and 2, expects each back at its QoS, and (v5) a user property and
    the subscription identifier. Exit 0 on success; prints what went wrong otherwise. */
#include <MQTTClient.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int s_fail(const char *what, int rc)
{
    fprintf(stderr, "paho-c: %s failed (%d)\n", what, rc);
    return 1;
}

int main(int argc, char **argv)
{
    if (argc != 3)
        return 2;
    int v5 = strcmp(argv[2], "5") == 0;
    char uri[64], topic[128], cid[64];
    snprintf(uri, sizeof(uri), "tcp://127.0.0.1:%s", argv[1]);
    snprintf(cid, sizeof(cid), "paho-c-%s-%d", argv[2], (int)getpid());
    snprintf(topic, sizeof(topic), "interop/paho-c/%s", cid);
    MQTTClient c;
    MQTTClient_createOptions co = MQTTClient_createOptions_initializer;
    co.MQTTVersion = v5 ? MQTTVERSION_5 : MQTTVERSION_3_1_1;
    int rc = MQTTClient_createWithOptions(&c, uri, cid, MQTTCLIENT_PERSISTENCE_NONE, NULL, &co);
    if (rc != MQTTCLIENT_SUCCESS)
        return s_fail("create", rc);
    MQTTClient_connectOptions o = MQTTClient_connectOptions_initializer;
    if (v5) {
        MQTTClient_connectOptions o5 = MQTTClient_connectOptions_initializer5;
        o = o5;
    }
    o.keepAliveInterval = 20;
    if (!v5)
        o.cleansession = 1;
    else
        o.cleanstart = 1;
    o.connectTimeout = 5;
    MQTTProperties none = MQTTProperties_initializer;
    if (v5) {
        MQTTResponse r = MQTTClient_connect5(c, &o, &none, NULL);
        rc = r.reasonCode;
        MQTTResponse_free(r);
    } else
        rc = MQTTClient_connect(c, &o);
    if (rc != MQTTCLIENT_SUCCESS)
        return s_fail("connect", rc);
    if (v5) {
        MQTTProperties sp = MQTTProperties_initializer;
        MQTTProperty id = {.identifier = MQTTPROPERTY_CODE_SUBSCRIPTION_IDENTIFIER};
        id.value.integer4 = 77;
        MQTTProperties_add(&sp, &id);
        MQTTSubscribe_options so = MQTTSubscribe_options_initializer;
        MQTTResponse r = MQTTClient_subscribe5(c, topic, 2, &so, &sp);
        rc = r.reasonCode == 2 ? 0 : r.reasonCode;
        MQTTResponse_free(r);
        MQTTProperties_free(&sp);
    } else {
        rc = MQTTClient_subscribe(c, topic, 2);
    }
    if (rc != MQTTCLIENT_SUCCESS)
        return s_fail("subscribe", rc);
    for (int qos = 0; qos <= 2; qos++) {
        char payload[32];
        snprintf(payload, sizeof(payload), "qos %d", qos);
        MQTTClient_message m = MQTTClient_message_initializer;
        m.payload = payload;
        m.payloadlen = (int)strlen(payload);
        m.qos = qos;
        MQTTClient_deliveryToken tok;
        if (v5) {
            MQTTProperty up = {.identifier = MQTTPROPERTY_CODE_USER_PROPERTY};
            up.value.data.data = "k";
            up.value.data.len = 1;
            up.value.value.data = "v";
            up.value.value.len = 1;
            MQTTProperties_add(&m.properties, &up);
            MQTTResponse r = MQTTClient_publishMessage5(c, topic, &m, &tok);
            rc = r.reasonCode;
            MQTTResponse_free(r);
            MQTTProperties_free(&m.properties);
        } else
            rc = MQTTClient_publishMessage(c, topic, &m, &tok);
        if (rc != MQTTCLIENT_SUCCESS)
            return s_fail("publish", rc);
        if (qos && (rc = MQTTClient_waitForCompletion(c, tok, 5000)) != MQTTCLIENT_SUCCESS)
            return s_fail("publish completion", rc);
        char *t = NULL;
        int tlen = 0;
        MQTTClient_message *got = NULL;
        rc = MQTTClient_receive(c, &t, &tlen, &got, 5000);
        if (rc != MQTTCLIENT_SUCCESS || !got)
            return s_fail("receive", rc);
        int ok = got->qos == qos && got->payloadlen == (int)strlen(payload) &&
                 memcmp(got->payload, payload, strlen(payload)) == 0;
        if (v5) {
            ok = ok && MQTTProperties_hasProperty(&got->properties, MQTTPROPERTY_CODE_USER_PROPERTY) &&
                 MQTTProperties_getNumericValue(&got->properties,
                                                MQTTPROPERTY_CODE_SUBSCRIPTION_IDENTIFIER) == 77;
        }
        if (!ok) {
            fprintf(stderr, "paho-c: unexpected message qos %d '%.*s'\n", got->qos,
                    got->payloadlen, (char *)got->payload);
            return 1;
        }
        MQTTClient_freeMessage(&got);
        MQTTClient_free(t);
    }
    if (v5)
        MQTTClient_disconnect5(c, 1000, MQTTREASONCODE_SUCCESS, NULL);
    else
        MQTTClient_disconnect(c, 1000);
    MQTTClient_destroy(&c);
    printf("paho-c v%s: ok\n", argv[2]);
    return 0;
}
