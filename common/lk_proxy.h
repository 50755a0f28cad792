/*  lk_proxy: the PROXY protocol header (HAProxy's, versions 1 and 2) that a TCP load
    balancer puts in front of a connection to tell the real client's address.

    A pure byte parser: no sockets. The frontend reads the header off the socket before
    anything else (TLS, WebSocket, MQTT) and takes the source address as the client's. The
    header is trusted as a whole or not at all: a listener expects it only when configured
    to (proxy_protocol true), since anyone able to reach such a listener can claim any
    address. */
#ifndef LK_PROXY_H_INCLUDED
#define LK_PROXY_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* v1 lines are at most 107 bytes (CRLF included); v2 headers longer than this (address
   block plus TLVs) are refused rather than buffered */
#define LK_PROXY_V1_MAX 107
#define LK_PROXY_MAX 2048

typedef struct {
    int version;        /* 1 or 2 */
    /* true: keep the connection's own addresses (v1 UNKNOWN, v2 LOCAL — a balancer's health
       check — or a v2 family other than IPv4/IPv6) */
    bool local;
    bool ipv6;
    char src[46];       /* textual addresses, as inet_ntop writes them */
    char dst[46];
    uint16_t src_port;
    uint16_t dst_port;
} lk_proxy_hdr_t;

/* Parses a PROXY header at the start of buf. Returns its length (> 0) when a whole valid
   header is there (hdr filled), 0 when the bytes so far are a valid beginning and more are
   needed, -1 when they cannot be a PROXY header. Every byte of an incomplete header is part
   of the header, so a reader may consume all it has without eating what follows. */
int lk_proxy_parse(const uint8_t *buf, size_t len, lk_proxy_hdr_t *hdr);

/* "src:port" into out, as the frontend writes a peer address */
void lk_proxy_peer(const lk_proxy_hdr_t *hdr, char *out, size_t cap);

int lk_proxy_test(bool verbose);

#endif
