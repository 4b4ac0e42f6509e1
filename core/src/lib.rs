//! UMP's shared library: the pieces the api, worker and operator crates all use.
//! Storage lives here because both the api (reads) and the worker (writes) need it.

pub mod store;

#[cfg(feature = "testing")]
pub mod testing;
