# mqtt-twister. Every target installs what it is missing (Debian packages need root or sudo).
SHELL := bash
.PHONY: all deps build release test fuzz demo demo-hosts bench profile install deb clean mosquitto-2.1

DEBIAN_PACKAGES := mosquitto mosquitto-dev libmosquitto-dev mosquitto-clients libclang-dev python3 iproute2 iptables
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
MULTIARCH := $(shell gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
PLUGIN_DIR ?= /usr/lib/$(MULTIARCH)
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)

all: build

deps:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

build: deps
	cargo build --workspace

release: deps
	cargo build --workspace --release

# Mosquitto 2.1.2 from Debian's source package, under $(TARGET_DIR)/mosquitto-2.1.2 (built once; the
# system's 2.0 broker is untouched). Integration tests run on both versions.
mosquitto-2.1:
	bash scripts/mosquitto-2.1.sh $(TARGET_DIR)

# Unit and integration tests of every crate (the crates have no doc tests), all of them even after a
# failure, then one total line.
test: build mosquitto-2.1
	@mkdir -p $(TARGET_DIR)
	set -o pipefail; cargo test --no-fail-fast --workspace --lib --bins --tests 2>&1 | tee $(TARGET_DIR)/test.log
	@awk '/^test result:/ {p += $$4; f += $$6} END {printf "all tests: %d passed, %d failed\n", p, f}' $(TARGET_DIR)/test.log

# The network input path (post/DM decoder and fragment reassembler) over millions of generated inputs,
# in release: MQTT_TWISTER_FUZZ_INPUTS (default 10 million), MQTT_TWISTER_FUZZ_SEED.
fuzz: deps
	cargo test --release -p mqtt-twister --lib fuzz_ -- --ignored --nocapture

demo: build
	bash scripts/demo.sh

# Three hosts (network namespaces, needs root), a message across, a link cut and healed.
demo-hosts: build
	$(SUDO) $(TARGET_DIR)/debug/demo-hosts

bench: release mosquitto-2.1
	cargo run --release -p mqtt-twister-bench -- $(BENCH_ARGS)

# Instruction counts of the broker thread and the plugin's callbacks (valgrind callgrind).
profile: release
	@command -v valgrind >/dev/null || $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind
	bash scripts/profile.sh

# Installs the plugin where Debian keeps broker plugins, plus the dev node and an example config.
install: release
	install -D -m 0644 $(TARGET_DIR)/release/libmqtt_twister.so $(DESTDIR)$(PLUGIN_DIR)/libmqtt_twister.so
	install -D -m 0755 $(TARGET_DIR)/release/twister-devnode $(DESTDIR)/usr/bin/twister-devnode
	install -D -m 0644 mosquitto.conf.example $(DESTDIR)/usr/share/doc/mqtt-twister/mosquitto.conf.example

# A Debian package of the same files.
deb: release
	rm -rf target/deb && $(MAKE) --no-print-directory install DESTDIR=$(CURDIR)/target/deb
	mkdir -p target/deb/DEBIAN
	printf 'Package: mqtt-twister\nVersion: $(VERSION)\nArchitecture: %s\nMaintainer: mqtt-twister developers\nDepends: mosquitto (>= 2.0)\nDescription: Mosquitto plugin joining brokers into one distributed MQTT broker over Twister\n' \
		"$$(dpkg --print-architecture)" > target/deb/DEBIAN/control
	dpkg-deb --build --root-owner-group target/deb target/mqtt-twister_$(VERSION)_$$(dpkg --print-architecture).deb

clean:
	cargo clean
