/*  lk_proxy: PROXY protocol v1 (text) and v2 (binary) header parser; see lk_proxy.h.

    Written from HAProxy's proxy-protocol.txt. Strict where the text says MUST (the v1
    line's shape and length, v2's signature, version and lengths), lenient where it lets
    the receiver choose: unknown v2 families and TLVs are skipped, not refused. */
#include "lk_proxy.h"
#include "lk_common.h"
#include <arpa/inet.h>
#include <stdio.h>

static const uint8_t s_v2_sig[12] = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                     0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};
static const char s_v1_sig[] = "PROXY ";

/* a decimal port without sign or leading zero */
static int s_port(const char *s, uint16_t *out)
{
    size_t n = strlen(s);
    if (n == 0 || n > 5 || (n > 1 && s[0] == '0'))
        return -1;
    uint32_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (uint32_t)(s[i] - '0');
    }
    if (v > 65535)
        return -1;
    *out = (uint16_t)v;
    return 0;
}

static int s_v1(const uint8_t *buf, size_t len, lk_proxy_hdr_t *hdr)
{
    size_t end = 0;
    for (size_t i = 0; i + 1 < len && i + 2 <= LK_PROXY_V1_MAX; i++)
        if (buf[i] == '\r' && buf[i + 1] == '\n') {
            end = i;
            break;
        }
    if (end == 0) {
        /* a line too long to be one, or a bare CR/LF inside it */
        size_t scan = len < LK_PROXY_V1_MAX ? len : LK_PROXY_V1_MAX;
        for (size_t i = 0; i < scan; i++)
            if (buf[i] == '\n' || (buf[i] == '\r' && i + 1 < scan))
                return -1;
        return len >= LK_PROXY_V1_MAX ? -1 : 0;
    }
    char line[LK_PROXY_V1_MAX + 1];
    memcpy(line, buf, end);
    line[end] = 0;
    for (size_t i = 0; i < end; i++)
        if (line[i] < 0x20 || line[i] > 0x7e)
            return -1;
    memset(hdr, 0, sizeof(*hdr));
    hdr->version = 1;
    char *save = NULL;
    char *w = strtok_r(line + sizeof(s_v1_sig) - 1, " ", &save);
    if (!w)
        return -1;
    if (strcmp(w, "UNKNOWN") == 0) {
        /* whatever follows is to be ignored */
        hdr->local = true;
        return (int)end + 2;
    }
    int af;
    if (strcmp(w, "TCP4") == 0)
        af = AF_INET;
    else if (strcmp(w, "TCP6") == 0)
        af = AF_INET6;
    else
        return -1;
    char *src = strtok_r(NULL, " ", &save), *dst = strtok_r(NULL, " ", &save);
    char *sp = strtok_r(NULL, " ", &save), *dp = strtok_r(NULL, " ", &save);
    if (!src || !dst || !sp || !dp || strtok_r(NULL, " ", &save))
        return -1;
    /* exactly one space between fields */
    if (memmem(buf, end, "  ", 2) || buf[end - 1] == ' ')
        return -1;
    uint8_t a[16];
    if (inet_pton(af, src, a) != 1 || inet_pton(af, dst, a) != 1)
        return -1;
    if (s_port(sp, &hdr->src_port) != 0 || s_port(dp, &hdr->dst_port) != 0)
        return -1;
    hdr->ipv6 = af == AF_INET6;
    snprintf(hdr->src, sizeof(hdr->src), "%s", src);
    snprintf(hdr->dst, sizeof(hdr->dst), "%s", dst);
    return (int)end + 2;
}

static int s_v2(const uint8_t *buf, size_t len, lk_proxy_hdr_t *hdr)
{
    if (len < 16)
        return 0;
    uint8_t ver = buf[12] >> 4, cmd = buf[12] & 0x0f;
    uint8_t fam = buf[13] >> 4, proto = buf[13] & 0x0f;
    size_t alen = ((size_t)buf[14] << 8) | buf[15];
    if (ver != 2 || cmd > 1 || fam > 3 || proto > 2)
        return -1;
    if (16 + alen > LK_PROXY_MAX)
        return -1;
    size_t need = fam == 1 ? 12 : fam == 2 ? 36 : fam == 3 ? 216 : 0;
    if (alen < need)
        return -1;
    if (len < 16 + alen)
        return 0;
    memset(hdr, 0, sizeof(*hdr));
    hdr->version = 2;
    const uint8_t *a = buf + 16;
    if (cmd == 0 || (fam != 1 && fam != 2)) {
        /* LOCAL (the balancer's own connection), or an address we cannot use */
        hdr->local = true;
        return (int)(16 + alen);
    }
    if (fam == 1) {
        inet_ntop(AF_INET, a, hdr->src, sizeof(hdr->src));
        inet_ntop(AF_INET, a + 4, hdr->dst, sizeof(hdr->dst));
        hdr->src_port = (uint16_t)((a[8] << 8) | a[9]);
        hdr->dst_port = (uint16_t)((a[10] << 8) | a[11]);
    } else {
        hdr->ipv6 = true;
        inet_ntop(AF_INET6, a, hdr->src, sizeof(hdr->src));
        inet_ntop(AF_INET6, a + 16, hdr->dst, sizeof(hdr->dst));
        hdr->src_port = (uint16_t)((a[32] << 8) | a[33]);
        hdr->dst_port = (uint16_t)((a[34] << 8) | a[35]);
    }
    return (int)(16 + alen);
}

int lk_proxy_parse(const uint8_t *buf, size_t len, lk_proxy_hdr_t *hdr)
{
    size_t n = len < sizeof(s_v2_sig) ? len : sizeof(s_v2_sig);
    if (memcmp(buf, s_v2_sig, n) == 0)
        return len < sizeof(s_v2_sig) ? 0 : s_v2(buf, len, hdr);
    n = len < sizeof(s_v1_sig) - 1 ? len : sizeof(s_v1_sig) - 1;
    if (memcmp(buf, s_v1_sig, n) == 0)
        return len < sizeof(s_v1_sig) - 1 ? 0 : s_v1(buf, len, hdr);
    return -1;
}

void lk_proxy_peer(const lk_proxy_hdr_t *hdr, char *out, size_t cap)
{
    snprintf(out, cap, "%s:%u", hdr->src, hdr->src_port);
}

/* ---- selftest ------------------------------------------------------------------------ */

int lk_proxy_test(bool verbose)
{
    int fails = 0;
#define S_EXPECT(cond)                                                                             \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            printf("lk_proxy: %s:%d: %s\n", __FILE__, __LINE__, #cond);                            \
            fails++;                                                                               \
        }                                                                                          \
    } while (0)
    lk_proxy_hdr_t h;
    const char *v1 = "PROXY TCP4 203.0.113.7 127.0.0.1 51234 1883\r\n\x10\x0c";
    size_t v1len = strlen(v1);
    S_EXPECT(lk_proxy_parse((const uint8_t *)v1, v1len, &h) == (int)v1len - 2);
    S_EXPECT(h.version == 1 && !h.local && !h.ipv6 && strcmp(h.src, "203.0.113.7") == 0 &&
             h.src_port == 51234 && h.dst_port == 1883);
    char peer[64];
    lk_proxy_peer(&h, peer, sizeof(peer));
    S_EXPECT(strcmp(peer, "203.0.113.7:51234") == 0);
    /* every prefix of a valid header asks for more */
    for (size_t i = 0; i < v1len - 2; i++)
        S_EXPECT(lk_proxy_parse((const uint8_t *)v1, i, &h) == 0);
    const char *v6 = "PROXY TCP6 2001:db8::1 ::1 65535 8883\r\n";
    S_EXPECT(lk_proxy_parse((const uint8_t *)v6, strlen(v6), &h) == (int)strlen(v6));
    S_EXPECT(h.ipv6 && strcmp(h.src, "2001:db8::1") == 0 && h.src_port == 65535);
    const char *unk = "PROXY UNKNOWN ffff::1 whatever\r\n";
    S_EXPECT(lk_proxy_parse((const uint8_t *)unk, strlen(unk), &h) == (int)strlen(unk) &&
             h.local);
    const char *bad[] = {
        "PROXY TCP4 203.0.113.7 127.0.0.1 51234\r\n",        /* a field missing */
        "PROXY TCP4 203.0.113.7 127.0.0.1 51234 1883 9\r\n", /* one too many */
        "PROXY TCP4 2001:db8::1 127.0.0.1 1 2\r\n",          /* family mismatch */
        "PROXY TCP4 203.0.113.7 127.0.0.1 65536 1883\r\n",   /* port range */
        "PROXY TCP4 203.0.113.7 127.0.0.1 051 1883\r\n",     /* leading zero */
        "PROXY TCP4  203.0.113.7 127.0.0.1 1 1883\r\n",      /* double space */
        "PROXY UDP4 203.0.113.7 127.0.0.1 1 1883\r\n",       /* protocol */
        "PROXY TCP4 203.0.113.7 127.0.0.1 1 1883\n",         /* bare LF */
        "GET / HTTP/1.1\r\n",                                /* not PROXY */
        "\x10\x0c\x00\x04MQTT",                              /* plain MQTT */
    };
    for (size_t i = 0; i < LK_ARRAY_LEN(bad); i++)
        S_EXPECT(lk_proxy_parse((const uint8_t *)bad[i], strlen(bad[i]), &h) == -1);
    /* a line that runs past 107 bytes without CRLF */
    char longl[200] = "PROXY UNKNOWN ";
    memset(longl + 14, 'x', 150);
    longl[164] = 0;
    S_EXPECT(lk_proxy_parse((const uint8_t *)longl, 164, &h) == -1);
    S_EXPECT(lk_proxy_parse((const uint8_t *)longl, 100, &h) == 0);

    /* v2 PROXY TCP/IPv4 with one TLV, then MQTT bytes */
    uint8_t v2[64];
    memcpy(v2, s_v2_sig, 12);
    v2[12] = 0x21;
    v2[13] = 0x11;
    v2[14] = 0;
    v2[15] = 12 + 4;
    const uint8_t a4[] = {198, 51, 100, 9, 127, 0, 0, 1, 0x30, 0x39, 0x07, 0x5b};
    memcpy(v2 + 16, a4, sizeof(a4));
    const uint8_t tlv[] = {0x04, 0x00, 0x01, 0x00}; /* PP2_TYPE_NOOP */
    memcpy(v2 + 28, tlv, sizeof(tlv));
    v2[32] = 0x10;
    S_EXPECT(lk_proxy_parse(v2, 33, &h) == 32);
    S_EXPECT(h.version == 2 && !h.local && strcmp(h.src, "198.51.100.9") == 0 &&
             h.src_port == 12345 && h.dst_port == 1883);
    for (size_t i = 0; i < 32; i++)
        S_EXPECT(lk_proxy_parse(v2, i, &h) == 0);
    /* LOCAL */
    v2[12] = 0x20;
    S_EXPECT(lk_proxy_parse(v2, 32, &h) == 32 && h.local);
    /* version 1 in a v2 header, a short address block, an oversize one */
    v2[12] = 0x11;
    S_EXPECT(lk_proxy_parse(v2, 32, &h) == -1);
    v2[12] = 0x21;
    v2[15] = 8;
    S_EXPECT(lk_proxy_parse(v2, 32, &h) == -1);
    v2[14] = 0xff;
    v2[15] = 0xff;
    S_EXPECT(lk_proxy_parse(v2, 32, &h) == -1);
    /* IPv6 */
    uint8_t v26[16 + 36];
    memcpy(v26, s_v2_sig, 12);
    v26[12] = 0x21;
    v26[13] = 0x21;
    v26[14] = 0;
    v26[15] = 36;
    memset(v26 + 16, 0, 36);
    v26[16] = 0x20;
    v26[17] = 0x01;
    v26[16 + 15] = 5;
    v26[16 + 31] = 1;
    v26[48] = 0x01;
    v26[49] = 0x00;
    S_EXPECT(lk_proxy_parse(v26, sizeof(v26), &h) == (int)sizeof(v26));
    S_EXPECT(h.ipv6 && strcmp(h.src, "2001::5") == 0 && h.src_port == 256);
#undef S_EXPECT
    if (verbose)
        printf("lk_proxy: %s\n", fails ? "FAIL" : "ok");
    return fails ? -1 : 0;
}
