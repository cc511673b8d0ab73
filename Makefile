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

.PHONY: all build static node-image test lint unit-tests install-check dracut-check test-vm bench golden install install-bin install-systemd install-dracut example clean

all: build

build:
	$(CARGO) build --workspace

# Static node binaries. --target keeps +crt-static away from build scripts and proc macros.
static:
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release --target $(TARGET) -p kmod-day1-load -p kmod-day1-pull
	@for b in $(NODE_BINS); do f=$(STATIC_DIR)/$$b; [ -f $$f ] && printf '%s: %s bytes, %s gzip\n' $$b $$(stat -c %s $$f) $$(gzip -9c $$f | wc -c); done; true

# The node image: the static node binaries and the prestage agent's static shell (busybox),
# FROM scratch, written as an OCI image layout with no container daemon (mcgen's
# kmod-day1-node-image: sorted entries, one mtime, the commit's time). Prints the manifest
# digest for `mcgen --node-image REF@DIGEST`. Push it with
#   skopeo copy oci:$(NODE_IMAGE_DIR):$(NODE_IMAGE_TAG) docker://REGISTRY/kmod-day1-node:$(NODE_IMAGE_TAG)
NODE_IMAGE_DIR ?= target/node-image
NODE_IMAGE_TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
BUSYBOX ?= /bin/busybox
node-image: static
	@test -x $(BUSYBOX) || { echo "node-image: $(BUSYBOX) is missing: apt-get install busybox-static (the prestage agent's shell)" >&2; exit 1; }
	rm -rf $(NODE_IMAGE_DIR)
	SOURCE_DATE_EPOCH=$$(git log -1 --format=%ct) $(CARGO) run -q -p mcgen --bin kmod-day1-node-image -- \
		--layout $(NODE_IMAGE_DIR) --tag $(NODE_IMAGE_TAG) --node-binaries $(STATIC_DIR) --busybox $(BUSYBOX) \
		--revision $$(git rev-parse HEAD)$$(git diff --quiet HEAD || echo -dirty)

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

# Pull vs skopeo on loopback (host), the boot storm (500 nodes, one throttling registry),
# then the VM timings (boot, loader vs modprobe).
bench: static
	hack/install-deps vm
	$(CARGO) run --release -p kmod-day1-pull --example bench_vs_skopeo
	$(CARGO) run --release -p kmod-day1-pull --example boot_storm
	$(CARGO) run --release -p kmod-day1-testvm -- bench

# Rewrites mcgen's golden files from the current output, and the dracut module's
# initramfs-content from mcgen's definition.
golden:
	MCGEN_BLESS=1 $(CARGO) test -p mcgen --test golden
	MCGEN_BLESS=1 $(CARGO) test -p mcgen --lib initramfs_content

example:
	$(CARGO) run -q -p mcgen -- --spec examples/e1000.yaml --delivery layered

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
	sed "s#/usr/local/bin/#$(BINDIR)/#" dracut/50kmod-day1/initramfs-content > $(DESTDIR)$(DRACUTDIR)/50kmod-day1/initramfs-content
	chmod 0755 $(DESTDIR)$(DRACUTDIR)/50kmod-day1/module-setup.sh
	sed 's#/usr/local/bin/#$(BINDIR)/#' units/kmod-day1-load.service > $(DESTDIR)$(DRACUTDIR)/50kmod-day1/kmod-day1-load.service

clean:
	$(CARGO) clean
