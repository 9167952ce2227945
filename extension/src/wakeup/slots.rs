//! One shared-memory slot per database with a wake-up worker: its state, the newest position
//! committed there, and the appending transactions still open.

use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};

use pgrx::prelude::*;
use pgrx::shmem::PGRXSharedMemory;
use pgrx::{pg_shmem_init, PgLwLock};

/// Databases that can have a wake-up worker at once; others fall back to per-transaction
/// NOTIFY.
const MAX_DATABASES: usize = 64;
/// A worker registered this long ago that never reported running is presumed failed.
pub(super) const START_TIMEOUT_SECS: i64 = 10;

#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub(super) enum State {
    #[default]
    Free,
    Starting,
    Running,
}

/// One database's wake-up state. The plain fields change under the exclusive lock; the
/// atomics are updated by committing backends under the shared lock, so commits of
/// different backends never wait for one another here.
#[derive(Default)]
pub(super) struct Slot {
    pub(super) database: u32,
    pub(super) state: State,
    /// Set by the utility hook: the worker must exit.
    pub(super) stop: bool,
    /// `pgprocno` of the running worker, whose latch commits set.
    pub(super) procno: i32,
    /// `GetCurrentTimestamp()` when the worker was registered.
    pub(super) registered_at: i64,
    /// The newest position committed in this database.
    pub(super) committed: AtomicI64,
    /// Transactions that appended and have not ended yet; the worker does not exit idle
    /// while one could still commit.
    pub(super) open_transactions: AtomicU32,
}

impl Slot {
    pub(super) fn holds(&self, database: u32) -> bool {
        self.state != State::Free && self.database == database
    }

    pub(super) fn reset(&mut self, database: u32) {
        *self = Slot {
            database,
            ..Slot::default()
        };
    }

    pub(super) fn end_transaction(&self) {
        let _ = self
            .open_transactions
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }
}

pub(super) struct Slots(pub(super) [Slot; MAX_DATABASES]);

impl Default for Slots {
    fn default() -> Self {
        Slots(std::array::from_fn(|_| Slot::default()))
    }
}

// SAFETY: plain data and atomics, no pointers.
unsafe impl PGRXSharedMemory for Slots {}

// SAFETY: `PgLwLock::new` requires the lock to be set up by `pg_shmem_init!` before use;
// `init` does that in `_PG_init` during `shared_preload_libraries`, and every use is behind
// `preloaded()`, which is only true then.
pub(super) static SLOTS: PgLwLock<Slots> = unsafe { PgLwLock::new(c"pg_eventstore wake-ups") };

/// Sets the slots up in shared memory (from `_PG_init`, when preloaded).
pub(super) fn init_shared_memory() {
    pg_shmem_init!(SLOTS);
}
