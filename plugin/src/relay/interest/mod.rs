//! Interest, decided without I/O: what this broker wants and when it says so in its profile
//! (`local`, with `profile`'s debounce and retries and the wait for a previous run's subscriptions,
//! `crate::relay::hold::returning`), and what the private recipients want, which decides where private
//! forwards go and how long one no recipient wants yet is held (`private`, with
//! `crate::relay::hold::private`). Each takes events and "now", and returns effects and the instant
//! it next needs to be called.

pub mod local;
pub mod private;
pub mod profile;
