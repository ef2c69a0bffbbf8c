# sparsync — build, test, install. `make` builds ./sparsync; `make check`
# installs missing Debian packages, then builds and runs every test.
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
MANDIR ?= $(PREFIX)/share/man
CC ?= cc
CFLAGS ?= -O2 -g
PKGS = libzstd liblz4 libxxhash libssh2 zlib libnbd
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS))
PKG_LIBS = $(shell pkg-config --libs $(PKGS)) -ldl
WARN = -Wall -Wextra -Werror
BASE_CFLAGS = -std=c11 -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 $(WARN) -pthread
SAN_FLAGS = -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

SRC := $(sort $(wildcard core/*.c formats/*.c transport/*.c cmd/*.c))
LIB_SRC := $(filter-out cmd/main.c,$(SRC))
UNIT_SRC := $(sort $(wildcard tests/unit/test_*.c))

OBJ := $(SRC:%.c=build/obj/%.o)
LIB_OBJ := $(LIB_SRC:%.c=build/obj/%.o)
ASAN_OBJ := $(SRC:%.c=build/asan/%.o)
ASAN_LIB_OBJ := $(LIB_SRC:%.c=build/asan/%.o)
UNIT_BIN := $(UNIT_SRC:tests/unit/%.c=build/unit/%)
UNIT_ASAN_BIN := $(UNIT_SRC:tests/unit/%.c=build/unit-asan/%)

.PHONY: all asan unit check demo bench bench-hosts fuzz install uninstall clean deps

all: sparsync

sparsync: $(OBJ)
	$(CC) $(BASE_CFLAGS) $(CFLAGS) $(LDFLAGS) -o $@ $(OBJ) $(PKG_LIBS)

build/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(BASE_CFLAGS) $(CFLAGS) $(PKG_CFLAGS) -MMD -MP -c -o $@ $<

# A test build that can be stopped at any write (SPARSYNC_FAULT_KILL_AT, see
# formats/image.c): the plain objects with one file built differently.
FAULT_OBJ := $(filter-out build/obj/formats/image.o,$(OBJ)) build/faults/formats/image.o
sparsync-faults: $(FAULT_OBJ)
	$(CC) $(BASE_CFLAGS) $(CFLAGS) $(LDFLAGS) -o $@ $(FAULT_OBJ) $(PKG_LIBS)

build/faults/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(BASE_CFLAGS) $(CFLAGS) -DSPARSYNC_FAULT_INJECTION $(PKG_CFLAGS) -MMD -MP -c -o $@ $<

# The sanitizer build is a separate binary so tests can run both.
asan: sparsync-asan
sparsync-asan: $(ASAN_OBJ)
	$(CC) $(BASE_CFLAGS) -O1 -g $(SAN_FLAGS) -o $@ $(ASAN_OBJ) $(PKG_LIBS)

build/asan/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(BASE_CFLAGS) -O1 -g $(SAN_FLAGS) $(PKG_CFLAGS) -MMD -MP -c -o $@ $<

unit: $(UNIT_BIN) $(UNIT_ASAN_BIN)

build/unit/%: tests/unit/%.c tests/unit/unit.h $(LIB_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(BASE_CFLAGS) $(CFLAGS) $(PKG_CFLAGS) -o $@ $< $(LIB_OBJ) $(PKG_LIBS)

build/unit-asan/%: tests/unit/%.c tests/unit/unit.h $(ASAN_LIB_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(BASE_CFLAGS) -O1 -g $(SAN_FLAGS) $(PKG_CFLAGS) -o $@ $< $(ASAN_LIB_OBJ) $(PKG_LIBS)

# libFuzzer targets (tests/fuzz/): clang with fuzzer+ASan+UBSan, linked
# against the library objects built the same way in build/fuzz/. Each runs
# FUZZ_SECONDS on a copy of its seed corpus; any finding fails.
FUZZ_SECONDS ?= 60
FUZZ_CC ?= clang
FUZZ_SAN = -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
FUZZ_CFLAGS = $(BASE_CFLAGS) -O1 -g $(FUZZ_SAN)
FUZZ_LIB_OBJ := $(LIB_SRC:%.c=build/fuzz/%.o)
FUZZ_BIN := build/fuzz/fuzz_qcow2 build/fuzz/fuzz_protocol
.SECONDARY: $(FUZZ_LIB_OBJ)

fuzz:
	@sh tests/install-deps.sh
	@$(MAKE) --no-print-directory $(FUZZ_BIN)
	@bash tests/fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_BIN)

build/fuzz/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link $(PKG_CFLAGS) -MMD -MP -c -o $@ $<

build/fuzz/fuzz_%: tests/fuzz/fuzz_%.c $(FUZZ_LIB_OBJ)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer $(PKG_CFLAGS) -o $@ $< $(FUZZ_LIB_OBJ) $(PKG_LIBS)

deps:
	@sh tests/install-deps.sh

# Packages first, in their own make run, so pkg-config sees them.
check:
	@sh tests/install-deps.sh
	@$(MAKE) --no-print-directory all asan unit sparsync-faults
	@bash tests/run.sh

demo:
	@sh tests/install-deps.sh
	@$(MAKE) --no-print-directory all
	@bash tests/demo.sh

bench:
	@sh tests/install-deps.sh bench
	@$(MAKE) --no-print-directory all
	@bash bench/run.sh

# Two hosts on one machine: a network namespace, a shaped veth link, a core
# each (bench/two-hosts.sh; root).
bench-hosts:
	@sh tests/install-deps.sh bench
	@$(MAKE) --no-print-directory all
	@bash bench/two-hosts.sh

install: sparsync
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man1
	install -m 755 sparsync $(DESTDIR)$(BINDIR)/sparsync
	if [ -f sparsync.1 ]; then install -m 644 sparsync.1 $(DESTDIR)$(MANDIR)/man1/sparsync.1; fi

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/sparsync $(DESTDIR)$(MANDIR)/man1/sparsync.1

clean:
	rm -rf build sparsync sparsync-asan sparsync-faults

-include $(OBJ:.o=.d) $(ASAN_OBJ:.o=.d) build/faults/formats/image.d $(FUZZ_LIB_OBJ:.o=.d)
