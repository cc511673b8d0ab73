# SPDX-License-Identifier: Apache-2.0
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
SYSTEMDDIR ?= /etc/systemd/system
DRACUTDIR ?= /usr/lib/dracut/modules.d
DESTDIR ?=
CARGO ?= cargo
TARGET := x86_64-unknown-linux-gnu
STATIC_DIR := target/$(TARGET)/release
NODE_BINS := kmod-day1-load kmod-day1-pull

.PHONY: all build static test lint unit-tests install-check dracut-check test-vm bench golden install install-bin install-systemd install-dracut example clean

all: build

build:
	$(CARGO) build --workspace

# Static node binaries. --target keeps +crt-static away from build scripts and proc macros.
static:
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release --target $(TARGET) -p kmod-day1-load -p kmod-day1-pull
	@for b in $(NODE_BINS); do f=$(STATIC_DIR)/$$b; [ -f $$f ] && printf '%s: %s bytes, %s gzip\n' $$b $$(stat -c %s $$f) $$(gzip -9c $$f | wc -c); done; true

# The one test command (README, .ci/run): installs what it needs, then runs everything.
test:
	hack/install-deps unit
	$(MAKE) lint unit-tests install-check dracut-check test-vm

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit-tests: static
	$(CARGO) test --workspace

test-vm:
	hack/install-deps vm
	$(CARGO) run --release -p kmod-day1-testvm -- all

# Pull vs skopeo on loopback (host), then the VM timings (boot, loader vs modprobe).
bench: static
	hack/install-deps vm
	$(CARGO) run --release -p kmod-day1-pull --example bench_vs_skopeo
	$(CARGO) run --release -p kmod-day1-testvm -- bench

# Rewrites mcgen's golden files from the current output.
golden:
	MCGEN_BLESS=1 $(CARGO) test -p mcgen --test golden

example:
	$(CARGO) run -q -p mcgen -- --spec examples/e1000.yaml

# make install into a scratch DESTDIR, checked file by file.
install-check: static
	d=$$(mktemp -d) && $(MAKE) -s install DESTDIR=$$d PREFIX=/usr && \
	test -x $$d/usr/bin/kmod-day1-load && test -x $$d/usr/bin/kmod-day1-pull && \
	grep -qx 'ExecStart=/usr/bin/kmod-day1-load' $$d/etc/systemd/system/kmod-day1-load.service && \
	grep -qx 'ExecStart=/usr/bin/kmod-day1-pull' $$d/etc/systemd/system/kmod-day1-pull.service && \
	rm -rf $$d && echo "install-check: ok"

# Builds an initramfs with the real dracut and checks what the module put in it.
dracut-check:
	dracut/test-module.sh

install: install-bin install-systemd install-dracut

install-bin: static
	install -D -m 0755 -t $(DESTDIR)$(BINDIR) $(addprefix $(STATIC_DIR)/,$(NODE_BINS))

install-systemd:
	install -d $(DESTDIR)$(SYSTEMDDIR)
	for u in units/*.service; do sed 's#/usr/local/bin/#$(BINDIR)/#' $$u > $(DESTDIR)$(SYSTEMDDIR)/$$(basename $$u); chmod 0644 $(DESTDIR)$(SYSTEMDDIR)/$$(basename $$u); done

install-dracut:
	install -d $(DESTDIR)$(DRACUTDIR)/50kmod-day1
	sed "s#/usr/local/bin/#$(BINDIR)/#" dracut/50kmod-day1/module-setup.sh > $(DESTDIR)$(DRACUTDIR)/50kmod-day1/module-setup.sh
	chmod 0755 $(DESTDIR)$(DRACUTDIR)/50kmod-day1/module-setup.sh
	sed 's#/usr/local/bin/#$(BINDIR)/#' units/kmod-day1-load.service > $(DESTDIR)$(DRACUTDIR)/50kmod-day1/kmod-day1-load.service

clean:
	$(CARGO) clean
