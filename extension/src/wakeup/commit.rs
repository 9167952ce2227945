//! What an appending transaction does: at its first append it is counted in its database's
//! slot (starting the worker if need be), and at commit it records its newest position and
//! sets the worker's latch.

use std::cell::Cell;
use std::sync::atomic::Ordering;

use pgrx::prelude::*;

use super::listeners::has_listeners;
use super::slots::{Slot, State, SLOTS, START_TIMEOUT_SECS};
use super::worker::register_worker;
use super::{async_notify, preloaded, set_latch, CHANNEL};

thread_local! {
    /// The newest position this transaction appended, once it has registered its commit
    /// callback; `None` outside such a transaction.
    static TRANSACTION_HEAD: Cell<Option<i64>> = const { Cell::new(None) };
    /// Whether `transaction_end` is registered in this backend.
    static CALLBACK_REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// Records that the current transaction appended up to `last_position`, so a wake-up is sent
/// once it commits.
pub(crate) fn appended(last_position: i64) {
    if let Some(head) = TRANSACTION_HEAD.get() {
        TRANSACTION_HEAD.set(Some(head.max(last_position)));
        return;
    }
    if !preloaded() || !watch_transaction() {
        // SAFETY: constant NUL-terminated strings; duplicates within a transaction are
        // folded by Postgres.
        unsafe { async_notify(CHANNEL, c"") };
        return;
    }
    TRANSACTION_HEAD.set(Some(last_position));
    if !CALLBACK_REGISTERED.get() {
        CALLBACK_REGISTERED.set(true);
        // SAFETY: a plain function, registered once per backend for the rest of its life;
        // it does nothing in transactions that did not append.
        unsafe { pg_sys::RegisterXactCallback(Some(transaction_end), std::ptr::null_mut()) };
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn transaction_end(
    event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    if TRANSACTION_HEAD.get().is_none() {
        return;
    }
    match event {
        pg_sys::XactEvent::XACT_EVENT_COMMIT => on_commit(),
        // A prepared transaction commits later, maybe in another session: subscribers see its
        // events on their next poll.
        pg_sys::XactEvent::XACT_EVENT_ABORT | pg_sys::XactEvent::XACT_EVENT_PREPARE => on_abort(),
        _ => {}
    }
}

/// Counts this transaction in its database's slot, starting the database's worker when it
/// has none. False when no slot or worker is available.
fn watch_transaction() -> bool {
    // SAFETY: a read of a backend global.
    let database = unsafe { pg_sys::MyDatabaseId.to_u32() };
    {
        // The common case: the database has a running worker.
        let slots = SLOTS.share();
        if let Some(slot) = slots
            .0
            .iter()
            .find(|s| s.holds(database) && s.state == State::Running)
        {
            slot.open_transactions.fetch_add(1, Ordering::AcqRel);
            return true;
        }
    }
    // SAFETY: reads the clock.
    let now = unsafe { pg_sys::GetCurrentTimestamp() };
    let (index, register) = {
        let mut slots = SLOTS.exclusive();
        let start_failed_long_ago = |s: &Slot| {
            s.state == State::Starting
                && now - s.registered_at > START_TIMEOUT_SECS * 1_000_000
                && s.open_transactions.load(Ordering::Acquire) == 0
        };
        let found = slots.0.iter().position(|s| s.holds(database));
        // A worker that died before it started (its database dropped meanwhile) leaves its
        // slot Starting; such slots are reused once nothing else is free.
        let index = match found
            .or_else(|| slots.0.iter().position(|s| s.state == State::Free))
            .or_else(|| slots.0.iter().position(start_failed_long_ago))
        {
            Some(index) => index,
            None => return false,
        };
        let slot = &mut slots.0[index];
        let start_failed = slot.state == State::Starting
            && now - slot.registered_at > START_TIMEOUT_SECS * 1_000_000;
        let register = slot.state == State::Free || start_failed;
        if slot.state == State::Free || slot.database != database {
            slot.reset(database);
        }
        if register {
            slot.state = State::Starting;
            slot.registered_at = now;
            slot.stop = false;
        }
        slot.open_transactions.fetch_add(1, Ordering::AcqRel);
        (index, register)
    };
    if register && !register_worker(index, database) {
        SLOTS.exclusive().0[index].reset(0);
        return false;
    }
    true
}

fn on_commit() {
    let head = TRANSACTION_HEAD.replace(None).unwrap_or(0);
    // SAFETY: a read of a backend global.
    let database = unsafe { pg_sys::MyDatabaseId.to_u32() };
    let latch = {
        let slots = SLOTS.share();
        let Some(slot) = slots.0.iter().find(|s| s.holds(database)) else {
            return;
        };
        slot.committed.fetch_max(head, Ordering::AcqRel);
        slot.end_transaction();
        (slot.state == State::Running).then_some(slot.procno)
    };
    // Waking the worker is a context switch; without listeners it would have nothing to do.
    if let Some(procno) = latch.filter(|_| has_listeners(database)) {
        set_latch(procno);
    }
}

fn on_abort() {
    TRANSACTION_HEAD.set(None);
    // SAFETY: a read of a backend global.
    let database = unsafe { pg_sys::MyDatabaseId.to_u32() };
    if let Some(slot) = SLOTS.share().0.iter().find(|s| s.holds(database)) {
        slot.end_transaction();
    }
}
