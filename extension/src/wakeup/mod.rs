//! Wake-ups for subscribers on channel `eventstore`, without a NOTIFY per append.
//!
//! `NOTIFY` serializes every notifying commit on a cluster-wide lock, so appends do not
//! notify themselves. When the library is in `shared_preload_libraries`, an appending
//! transaction instead records, at commit, the newest position it wrote in a shared-memory
//! slot of its database and sets the latch of that database's wake-up worker. The worker
//! (one background process per database that appends, started on the first append) reads
//! `eventstore.head_position()` and sends `NOTIFY eventstore, '<head>'` when it moved, at most
//! once per `eventstore.wakeup_interval` milliseconds (default 3). It keeps polling briefly
//! while committed events are not yet readable (an older transaction is still running), so a wake-up is sent when they become
//! readable even if nothing else commits.
//!
//! Without preloading there is no shared memory: each appending transaction then queues one
//! `NOTIFY eventstore` with an empty payload itself (correct, but notifying commits are
//! serialized). `eventstore.wakeup_mode()` says which of the two is in effect.
//!
//! Workers of databases where no session has run `LISTEN eventstore` do no work: the utility
//! hook counts listening sessions per database.
//!
//! A worker holds a connection to its database, which `DROP DATABASE`, `ALTER DATABASE` and
//! `CREATE DATABASE ... TEMPLATE` refuse to work around; a utility hook asks the worker of
//! such a database to exit first. Idle workers exit after a minute.

//!
//! The parts: `settings` (the GUC), `slots` (one shared-memory slot per database with a
//! worker), `listeners` (the sessions listening, per database), `commit` (what an appending
//! transaction does at its end), `worker` (the background worker), `utility` (the utility
//! hook: LISTEN counting, and stopping a worker before statements that need its database
//! to themselves).

mod commit;
mod listeners;
mod settings;
mod slots;
mod utility;
mod worker;

use std::ffi::{c_char, CStr};

use pgrx::pg_sys;

pub(crate) use commit::appended;

const CHANNEL: &CStr = c"eventstore";

/// Whether `_PG_init` ran during `shared_preload_libraries`, so `SLOTS` exists. Set in the
/// postmaster and inherited by every backend it forks.
static mut PRELOADED: bool = false;

unsafe extern "C-unwind" {
    #[link_name = "Async_Notify"]
    fn async_notify_unguarded(channel: *const c_char, payload: *const c_char);
}

/// `Async_Notify` of commands/async.h, which pgrx does not bind.
unsafe fn async_notify(channel: &CStr, payload: &CStr) {
    // SAFETY: the boundary turns a Postgres ERROR into a Rust panic pgrx can rethrow.
    unsafe {
        pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| {
            async_notify_unguarded(channel.as_ptr(), payload.as_ptr())
        })
    }
}

/// Called from `_PG_init`.
pub(crate) fn init() {
    settings::define();
    // SAFETY: _PG_init runs single-threaded, before any backend uses these statics.
    unsafe {
        if !pg_sys::process_shared_preload_libraries_in_progress {
            return;
        }
        PRELOADED = true;
        slots::init_shared_memory();
        listeners::init_shared_memory();
        utility::install();
    }
}

fn preloaded() -> bool {
    // SAFETY: written only in _PG_init.
    unsafe { PRELOADED }
}

/// `eventstore.wakeup_mode()`: `coalesced` with the worker, `per_transaction` without.
pub(crate) fn mode() -> &'static str {
    if preloaded() {
        "coalesced"
    } else {
        "per_transaction"
    }
}

fn set_latch(procno: i32) {
    let Ok(procno) = usize::try_from(procno) else {
        return;
    };
    // SAFETY: procno is the pgprocno of a live worker, an index into ProcGlobal->allProcs,
    // whose latches live as long as shared memory.
    unsafe {
        let proc_ = (*pg_sys::ProcGlobal).allProcs.add(procno);
        pg_sys::SetLatch(&raw mut (*proc_).procLatch);
    }
}
