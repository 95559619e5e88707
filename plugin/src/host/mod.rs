//! The host layer: everything that touches the broker, and the only home of `unsafe`.
//!
//! - `bindings`: the plugin API generated from Mosquitto's headers (2.0).
//! - `raw`: Mosquitto 2.1's event structs and codes, absent from 2.0's headers.
//! - `token`: the `BrokerThread` token (not `Send`, not `Sync`, made only here), with compile-fail
//!   tests that rustc refuses to let it leave the broker's thread.
//! - `thread`: the broker's client handle, logging and publishing into the broker (both need the
//!   token, so they cannot be called off the broker's thread).
//! - `trampolines`: one panic-guarded `extern "C"` trampoline per callback kind, generic over the
//!   safe handler (`Callbacks`), turning raw event data into the views of `views`.
//! - `entry`: the plugin's entry points (version, init, cleanup) and callback registration.
//! - `views`: safe typed views of event data (no broker symbol: unit tests use them too).
//!
//! The broker's symbols exist only inside a running mosquitto: unit tests build only `views`.

mod token;
pub mod views;

#[cfg(not(test))]
mod bindings;
#[cfg(not(test))]
pub mod entry;
#[cfg(not(test))]
mod raw;
#[cfg(not(test))]
mod thread;
#[cfg(not(test))]
mod trampolines;

pub use token::BrokerThread;
