//! `eventstore.wakeup_interval`.

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

/// `eventstore.wakeup_interval`: the shortest time between two wake-ups of one database, in
/// milliseconds. Each wake-up is a small transaction of the worker; under a steady stream of
/// commits this bounds them to a few hundred per second.
pub(super) static WAKEUP_INTERVAL_MS: GucSetting<i32> = GucSetting::<i32>::new(3);
/// Defines the setting (from `_PG_init`, preloaded or not).
pub(super) fn define() {
    GucRegistry::define_int_guc(
        c"eventstore.wakeup_interval",
        c"Shortest time between two wake-ups on channel eventstore, in milliseconds.",
        c"Used by the wake-up worker when pg_eventstore is in shared_preload_libraries.",
        &WAKEUP_INTERVAL_MS,
        1,
        1000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
}
