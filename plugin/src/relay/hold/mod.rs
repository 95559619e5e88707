//! Messages waiting for interest that may come: `returning` holds messages from the network for a
//! previous run's subscriptions after a restart, `private` holds private forwards no recipient wants
//! yet. Both are bounded containers with their deadlines; what to do with them is decided in
//! `crate::relay::interest`.

pub mod private;
pub mod returning;
