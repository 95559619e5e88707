//! The broker thread's token, alone in this file and without any dependency: the compile-fail tests
//! (`token_tests.rs`) compile this very file with rustc, next to code that tries to take the token
//! off the broker's thread or to make one outside the host layer.

use std::marker::PhantomData;

/// Proof of running on the broker's thread, inside a call from the broker. Zero-sized, neither `Send`
/// nor `Sync`, and only the host layer (whose trampolines and entry points the broker calls on its
/// own thread) creates one: `log` and `publish` (`views::Broker`) take it, so code that could run on
/// another thread cannot call them.
pub struct BrokerThread {
    _not_send_nor_sync: PhantomData<*const ()>,
}

impl BrokerThread {
    /// Only for code the broker calls on its own thread (the trampolines and entry points).
    #[cfg_attr(test, allow(dead_code))]
    pub(super) fn here() -> Self {
        BrokerThread {
            _not_send_nor_sync: PhantomData,
        }
    }
}

/// Fails to compile when `BrokerThread` is `Send` or `Sync` (say, through an `unsafe impl` added
/// anywhere in the crate, which the compile-fail tests, compiling this file alone, would not see):
/// with either, the call below is ambiguous between two implementations (the pattern of
/// `static_assertions::assert_not_impl_any!`).
fn _assert_not_send_nor_sync() {
    trait AmbiguousIfImpl<A> {
        fn some_item() {}
    }
    impl<T: ?Sized> AmbiguousIfImpl<()> for T {}
    struct IfSend;
    impl<T: ?Sized + Send> AmbiguousIfImpl<IfSend> for T {}
    struct IfSync;
    impl<T: ?Sized + Sync> AmbiguousIfImpl<IfSync> for T {}
    let _ = <BrokerThread as AmbiguousIfImpl<_>>::some_item;
}

#[cfg(test)]
#[path = "token_tests.rs"]
mod tests;
