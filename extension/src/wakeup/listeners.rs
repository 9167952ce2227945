//! The sessions that ran `LISTEN eventstore`, counted per database in shared memory, so a
//! worker whose database has no listener does no work at all.

use std::cell::Cell;

use pgrx::prelude::*;
use pgrx::shmem::PGRXSharedMemory;
use pgrx::{pg_shmem_init, PgLwLock};

use super::set_latch;
use super::slots::{State, SLOTS};

thread_local! {
    /// Whether this session is counted in `LISTENERS`.
    static LISTENING: Cell<bool> = const { Cell::new(false) };
    /// Whether the exit callback that uncounts this session is registered.
    static EXIT_CALLBACK: Cell<bool> = const { Cell::new(false) };
}

/// Sessions that ran `LISTEN eventstore`, per database, so a worker whose database has no
/// listener does no work at all. Counted by the utility hook; a full table makes every worker
/// notify regardless.
#[derive(Clone, Copy, Default)]
struct ListenerCount {
    database: u32,
    sessions: u32,
}

#[derive(Clone, Copy)]
struct Listeners {
    counts: [ListenerCount; MAX_LISTENING_DATABASES],
    overflowed: bool,
}

impl Default for Listeners {
    fn default() -> Self {
        Listeners {
            counts: [ListenerCount::default(); MAX_LISTENING_DATABASES],
            overflowed: false,
        }
    }
}

// SAFETY: plain old data, no pointers.
unsafe impl PGRXSharedMemory for Listeners {}

// SAFETY: as for `SLOTS`: set up by `pg_shmem_init!` in `_PG_init`, used only when preloaded.
static LISTENERS: PgLwLock<Listeners> = unsafe { PgLwLock::new(c"pg_eventstore listeners") };
const MAX_LISTENING_DATABASES: usize = 64;

/// Counts or uncounts this session as a listener on channel `eventstore`.
pub(super) fn set_listening(listening: bool) {
    if LISTENING.get() == listening {
        return;
    }
    LISTENING.set(listening);
    // SAFETY: a read of a backend global.
    let database = unsafe { pg_sys::MyDatabaseId.to_u32() };
    let mut listeners = LISTENERS.exclusive();
    let index = listeners
        .counts
        .iter()
        .position(|c| c.sessions > 0 && c.database == database)
        .or_else(|| listeners.counts.iter().position(|c| c.sessions == 0));
    match (index, listening) {
        (Some(index), true) => {
            let count = &mut listeners.counts[index];
            count.database = database;
            count.sessions += 1;
        }
        (Some(index), false) => {
            let count = &mut listeners.counts[index];
            if count.database == database {
                count.sessions = count.sessions.saturating_sub(1);
            }
        }
        (None, _) => listeners.overflowed = true,
    }
    drop(listeners);
    if listening {
        // The worker may have skipped commits while nobody listened; let it look now.
        let procno = SLOTS
            .share()
            .0
            .iter()
            .find(|s| s.holds(database) && s.state == State::Running)
            .map(|s| s.procno);
        if let Some(procno) = procno {
            set_latch(procno);
        }
    }
    if listening && !EXIT_CALLBACK.get() {
        EXIT_CALLBACK.set(true);
        // SAFETY: registers a plain function, run when this backend exits.
        unsafe { pg_sys::before_shmem_exit(Some(uncount_at_exit), pg_sys::Datum::from(0)) };
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn uncount_at_exit(_code: i32, _arg: pg_sys::Datum) {
    set_listening(false);
}

/// Whether any session of `database` listens on channel `eventstore`.
pub(super) fn has_listeners(database: u32) -> bool {
    let listeners = LISTENERS.share();
    listeners.overflowed
        || listeners
            .counts
            .iter()
            .any(|c| c.sessions > 0 && c.database == database)
}

/// Sets the counts up in shared memory (from `_PG_init`, when preloaded).
pub(super) fn init_shared_memory() {
    pg_shmem_init!(LISTENERS);
}
