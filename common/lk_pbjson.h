/*  lk_pbjson: any protobuf-c message as JSON, driven by its descriptor — used to dump the
    message log. Bytes fields print as text when they are valid UTF-8 without control
    characters, else as {"base64": "..."}. Proto3 fields at their default are left out.
    Only this file and the CLI include cJSON. */
#ifndef LK_PBJSON_H_INCLUDED
#define LK_PBJSON_H_INCLUDED

#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>

/* a malloc'ed JSON text (one line); caller frees */
char *lk_pbjson_print(const ProtobufCMessage *msg);

int lk_pbjson_test(bool verbose);

#endif
