//! Generates the Mosquitto plugin API bindings from the system's headers (through include/mqtt_twister.h).

use std::env;
use std::path::{Path, PathBuf};

const HEADERS: [&str; 3] = ["mosquitto.h", "mosquitto_broker.h", "mosquitto_plugin.h"];

fn main() {
    println!("cargo:rerun-if-changed=include/mqtt_twister.h");
    println!("cargo:rerun-if-env-changed=MOSQUITTO_INCLUDE_DIR");
    let include = env::var("MOSQUITTO_INCLUDE_DIR").unwrap_or_else(|_| "/usr/include".into());
    let missing: Vec<&str> = HEADERS
        .iter()
        .copied()
        .filter(|h| !Path::new(&include).join(h).exists())
        .collect();
    if !missing.is_empty() {
        panic!(
            "\n\nmqtt-twister needs the Mosquitto plugin headers {missing:?} in {include}.\n\
             On Debian/Ubuntu: apt-get install mosquitto-dev libmosquitto-dev libclang-dev\n\
             (or `make deps`), or point MOSQUITTO_INCLUDE_DIR at the directory holding them.\n\n"
        );
    }
    let bindings = bindgen::Builder::default()
        .header("include/mqtt_twister.h")
        .clang_arg(format!("-I{include}"))
        // Only what upstream Mosquitto 2.0 exports to plugins; anything newer is looked up at run time.
        .allowlist_function("mosquitto_(callback_register|callback_unregister|log_printf|broker_publish|malloc|free|client_id|client_clean_session|client_protocol_version|validate_utf8|pub_topic_check)")
        .allowlist_type("mosquitto_evt_(message|acl_check|tick|disconnect)")
        .allowlist_type("mosquitto_opt|mosquitto_plugin_id_t|mosquitto_plugin_event")
        .allowlist_var("MOSQ_(ERR|ACL|LOG)_.*")
        .allowlist_type("mosq_err_t")
        .prepend_enum_name(false)
        .layout_tests(false)
        .generate()
        .unwrap_or_else(|e| panic!("bindgen could not read the Mosquitto headers in {include}: {e} (is libclang-dev installed?)"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("bindings.rs");
    bindings
        .write_to_file(&out)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", out.display()));
}
