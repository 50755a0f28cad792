# Latchkey top-level build. Out-of-tree into $(BUILD); dependencies from pkg-config.
#   make                 build every service, the CLI and the selftests
#   make SANITIZE=address,undefined   the same into build-san/ with ASan + UBSan
#   make run             install what is missing, build, run the whole stack under s6
#   make test            selftests + integration tests against real servers
#   make test-containers  docker/ images and compose stack, tested with a real Docker engine
#   make fuzz FUZZ_TIME=60   run each libFuzzer target for FUZZ_TIME seconds
#   make format-check    clang-format conformance
#   make bench           the load generator $(BUILD)/bin/lkbench (bench/run drives it)

SANITIZE ?=
BUILD ?= build$(if $(SANITIZE),-san)
CC ?= cc

PKGS := libczmq libzmq hiredis libpq libprotobuf-c openssl libcjson libmicrohttpd libcurl
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

OPT ?= -O2
CFLAGS := $(OPT) -g -std=gnu11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wno-unused-parameter \
          -Wno-missing-field-initializers -Icommon -I$(BUILD)/gen $(PKG_CFLAGS) -MMD -MP \
          $(EXTRA_CFLAGS)
LDFLAGS := $(EXTRA_LDFLAGS)
LIBS := $(PKG_LIBS) -lcrypt -lm -lpthread
ifneq ($(SANITIZE),)
CFLAGS += -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=$(SANITIZE)
endif

SERVICES := mqtt-frontend router session-store auth latchkey lock-arbiter history-writer api ota-distributor

PROTO := proto/latchkey.proto
GEN_C := $(BUILD)/gen/latchkey.pb-c.c
GEN_H := $(BUILD)/gen/latchkey.pb-c.h

COMMON_SRCS := $(filter-out common/selftest.c,$(wildcard common/*.c))
COMMON_OBJS := $(COMMON_SRCS:%.c=$(BUILD)/obj/%.o) $(BUILD)/obj/gen/latchkey.pb-c.o
LIB := $(BUILD)/lib/liblatchkey.a

BINS := $(SERVICES:%=$(BUILD)/bin/%)
BENCH := $(BUILD)/bin/lkbench
SELFTESTS := $(BUILD)/test/common-selftest


.PHONY: dashboard
.PHONY: all run test test-fast check memcheck fuzz format format-check clean deps bench bins \
        print-services test-containers
.DEFAULT_GOAL := all

$(GEN_C) $(GEN_H): $(PROTO)
	@mkdir -p $(BUILD)/gen
	protoc-c --c_out=$(BUILD)/gen -Iproto $<

$(BUILD)/obj/gen/latchkey.pb-c.o: $(GEN_C) $(GEN_H)
	@mkdir -p $(dir $@)
	$(CC) $(filter-out -Werror,$(CFLAGS)) -c -o $@ $<

$(BUILD)/obj/%.o: %.c $(GEN_H)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

$(LIB): $(COMMON_OBJS)
	@mkdir -p $(dir $@)
	rm -f $@
	ar rcs $@ $^

$(BUILD)/test/common-selftest: $(BUILD)/obj/common/selftest.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

# One folder a service: main.c is the daemon's entry, selftest.c (if any) runs the
# selftests of the other files, which form the service's library.
define SERVICE_template
$(1)_SRCS := $$(filter-out services/$(1)/main.c services/$(1)/selftest.c,$$(wildcard services/$(1)/*.c))
$(1)_OBJS := $$($(1)_SRCS:%.c=$(BUILD)/obj/%.o)
$(BUILD)/bin/$(1): $$($(1)_OBJS) $(BUILD)/obj/services/$(1)/main.o $(LIB)
	@mkdir -p $$(dir $$@)
	$(CC) $(LDFLAGS) -o $$@.tmp $$^ $(LIBS) && mv -f $$@.tmp $$@
ifneq ($$(wildcard services/$(1)/selftest.c),)
SELFTESTS += $(BUILD)/test/$(1)-selftest
$(BUILD)/test/$(1)-selftest: $$($(1)_OBJS) $(BUILD)/obj/services/$(1)/selftest.o $(LIB)
	@mkdir -p $$(dir $$@)
	$(CC) $(LDFLAGS) -o $$@ $$^ $(LIBS)
endif
endef
$(foreach s,$(SERVICES),$(eval $(call SERVICE_template,$(s))))

# test tools: tests/tools/lk_<name>.c is $(BUILD)/test/lk-<name>, linked with the common library
TEST_TOOLS := $(patsubst tests/tools/lk_%.c,$(BUILD)/test/lk-%,$(wildcard tests/tools/lk_*.c))
$(BUILD)/test/lk-%: $(BUILD)/obj/tests/tools/lk_%.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)
.SECONDARY: $(TEST_TOOLS:$(BUILD)/test/lk-%=$(BUILD)/obj/tests/tools/lk_%.o)

INTEROP := $(BUILD)/test/interop-paho-c

# the api's dashboard: our static files plus the charts library from npm (uPlot, pinned by
# services/api/dashboard/package-lock.json), installed under $(BUILD) at build time; nothing
# is fetched at run time and nothing from node_modules is committed
DASH_SRC := services/api/dashboard
DASHBOARD := $(BUILD)/dashboard/index.html
$(DASHBOARD): $(wildcard $(DASH_SRC)/*.html $(DASH_SRC)/*.js $(DASH_SRC)/*.css) $(DASH_SRC)/package-lock.json
	@mkdir -p $(BUILD)/dashboard-npm $(BUILD)/dashboard/vendor
	cp $(DASH_SRC)/package.json $(DASH_SRC)/package-lock.json $(BUILD)/dashboard-npm/
	cd $(BUILD)/dashboard-npm && npm ci --no-audit --no-fund --silent
	cp $(BUILD)/dashboard-npm/node_modules/uplot/dist/uPlot.iife.min.js \
	   $(BUILD)/dashboard-npm/node_modules/uplot/dist/uPlot.min.css $(BUILD)/dashboard/vendor/
	cp $(DASH_SRC)/app.js $(DASH_SRC)/app.css $(BUILD)/dashboard/
	cp $(DASH_SRC)/index.html $@

dashboard: $(DASHBOARD)

all: $(BINS) $(SELFTESTS) $(BENCH) $(TEST_TOOLS) $(INTEROP) $(DASHBOARD)

# the binaries only (docker/Dockerfile), and their names
bins: $(BINS)
print-services:
	@echo $(SERVICES)

# the Eclipse Paho C client, for interoperability tests
$(BUILD)/test/interop-paho-c: tests/interop/paho_c.c
	@mkdir -p $(dir $@)
	$(CC) -O2 -g -Wall -Wextra -Werror -o $@ $< -lpaho-mqtt3c

# the load generator (bench/*.c), a client of the common library's MQTT codec
BENCH_SRCS := $(wildcard bench/*.c)
$(BENCH): $(BENCH_SRCS:%.c=$(BUILD)/obj/%.o) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

bench: $(BENCH)

# fuzzers: tests/fuzz/fuzz_<name>.c, built with clang's libFuzzer against the common sources
FUZZ_BUILD := build-fuzz
FUZZ_SRCS := $(wildcard tests/fuzz/fuzz_*.c)
FUZZERS := $(FUZZ_SRCS:tests/fuzz/%.c=$(FUZZ_BUILD)/%)
FUZZ_TIME ?= 30
FUZZ_CFLAGS := -g -O1 -std=gnu11 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined \
               -fno-sanitize-recover=undefined -Icommon \
               -I$(FUZZ_BUILD)/gen $(PKG_CFLAGS)

$(FUZZ_BUILD)/gen/latchkey.pb-c.c: $(PROTO)
	@mkdir -p $(FUZZ_BUILD)/gen
	protoc-c --c_out=$(FUZZ_BUILD)/gen -Iproto $<

$(FUZZ_BUILD)/%: tests/fuzz/%.c $(COMMON_SRCS) $(FUZZ_BUILD)/gen/latchkey.pb-c.c
	clang $(FUZZ_CFLAGS) -o $@ $< $(COMMON_SRCS) $(FUZZ_BUILD)/gen/latchkey.pb-c.c $(LIBS)

fuzz: $(FUZZERS)
	tests/fuzz/run.sh $(FUZZ_BUILD) $(FUZZ_TIME)

run: deps
	$(MAKE) all
	BUILD=$(BUILD) supervise/latchkey-up

deps:
	supervise/install-deps

# make test: every test on the normal build, then again on the ASan + UBSan build;
# make test-fast: the normal build only (the everyday loop)
ifeq ($(SANITIZE),)
test: all
	$(MAKE) --no-print-directory SANITIZE=address,undefined all
	tests/run-suites $(BUILD) build-san
else
test: all
	tests/run-all $(BUILD)
endif

test-fast: all
	tests/run-all $(BUILD)

# the containers (docker/): Docker's engine (started if none runs), the images, the stack
# with 3 frontends and real clients; see tests/containers/run
test-containers:
	supervise/install-deps --containers
	tests/containers/run

check: test

memcheck: all
	tests/run-all $(BUILD) --selftests-only --valgrind

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

format-check:
	clang-format --dry-run --Werror $$(git ls-files '*.c' '*.h')

clean:
	rm -rf build build-san build-fuzz

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
