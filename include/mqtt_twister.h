/*
 * What bindgen reads to generate the plugin's bindings: the system's Mosquitto plugin API.
 * Debian: apt-get install mosquitto-dev libmosquitto-dev (and libclang-dev for bindgen).
 * Another location: MOSQUITTO_INCLUDE_DIR=/path/to/include cargo build
 */
#include <stdbool.h>
#include <stdint.h>
#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>
