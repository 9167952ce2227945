//! Global positions: `(full transaction id + position base) << 20 | index within the
//! transaction`.
//!
//! Ordering by transaction id lets readers hand out exactly the events whose transactions
//! have ended (everything below the snapshot's xmin, see `eventstore._log_horizon`), so a
//! transaction that commits late is never skipped. The per-transaction counter lives in this
//! backend's memory: writers never share a sequence or wait for one another.
//!
//! The position base (`eventstore.position_base`) lifts this database's transaction ids above
//! events restored from another cluster, whose ids mean nothing here. It changes only in
//! `eventstore.rebase_positions()`, which holds off appends while it does and then tells every
//! session (`eventstore._position_base_changed()`, a relcache invalidation), so each backend
//! reads it once and keeps it until told.

use std::cell::Cell;

use pgrx::pg_sys;

use crate::error::{limit_exceeded, raise};
use crate::limits::{MAX_EVENTS_PER_TRANSACTION, POSITION_INDEX_BITS};
use crate::spi::{Connection, Statement};

static BASE: Statement = Statement {
    sql: c"SELECT base FROM eventstore.position_base",
    arg_types: &[],
};

/// Transaction ids (plus base) above this would push a position past `i64::MAX`.
const MAX_FULL_XID: u64 = (i64::MAX as u64) >> POSITION_INDEX_BITS;

thread_local! {
    /// (full transaction id, next free index within it). A new transaction id resets the index;
    /// indexes used by a rolled-back savepoint are simply never reused.
    static NEXT_INDEX: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
    /// The position base and the oid of `eventstore.position_base`, once read.
    static CACHED_BASE: Cell<Option<(u64, pg_sys::Oid)>> = const { Cell::new(None) };
    /// The transaction that changed the base and has not ended: what it reads of the base is
    /// not cached, as it may still roll back.
    static CHANGED_BY: Cell<u64> = const { Cell::new(0) };
}

/// Registers the invalidation that makes every backend re-read the base after a rebase.
pub(crate) fn init() {
    // SAFETY: called from _PG_init; the callback lives as long as the library.
    unsafe { pg_sys::CacheRegisterRelcacheCallback(Some(forget_base), pg_sys::Datum::from(0)) };
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn forget_base(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    CACHED_BASE.with(|base| {
        if let Some((_, table)) = base.get() {
            if relid == pg_sys::InvalidOid || relid == table {
                base.set(None);
            }
        }
    });
}

/// The oid of `eventstore.position_base`, or `InvalidOid` while the database still has the
/// SQL of a version before 0.4.0 (the library is updated before `ALTER EXTENSION UPDATE`).
fn base_table() -> pg_sys::Oid {
    // SAFETY: catalog lookups inside a transaction.
    unsafe {
        let namespace = pg_sys::get_namespace_oid(c"eventstore".as_ptr(), false);
        pg_sys::get_relname_relid(c"position_base".as_ptr(), namespace)
    }
}

/// The position base as last committed. Read with the latest snapshot, not the transaction's:
/// a REPEATABLE READ transaction that waited out a rebase must still append above it.
fn base() -> u64 {
    if let Some((base, _)) = CACHED_BASE.with(Cell::get) {
        return base;
    }
    let table = base_table();
    if table == pg_sys::InvalidOid {
        return 0;
    }
    let base = {
        let spi = Connection::open();
        let rows = spi.read_latest(&BASE, &[]);
        let base = if rows.len() == 1 {
            rows.i64(0, 1)
        } else {
            None
        };
        u64::try_from(base.unwrap_or(0)).unwrap_or(0)
    };
    // SAFETY: a read of the transaction state.
    let current = unsafe { pg_sys::GetTopFullTransactionIdIfAny() }.value;
    if current == 0 || current != CHANGED_BY.with(Cell::get) {
        CACHED_BASE.with(|cached| cached.set(Some((base, table))));
    }
    base
}

/// Reserves `count` consecutive positions in the current top-level transaction, assigning it a
/// transaction id if it has none yet, and returns the first. Called with `eventstore.events`
/// open for insert, so no rebase runs meanwhile.
pub(crate) fn reserve(count: usize) -> i64 {
    // SAFETY: called inside a transaction; assigns the top-level xid when needed.
    let xid = unsafe { pg_sys::GetTopFullTransactionId() }.value;
    let lifted = xid.saturating_add(base());
    if lifted > MAX_FULL_XID {
        raise(limit_exceeded(format!(
            "transaction id {xid} plus the position base no longer fits in a 63-bit event position"
        )));
    }
    let count = count as u64;
    let first = NEXT_INDEX.with(|next| {
        let (owner, index) = next.get();
        let first = if owner == xid { index } else { 0 };
        if first + count > MAX_EVENTS_PER_TRANSACTION {
            raise(
                limit_exceeded(format!(
                    "a transaction can append at most {MAX_EVENTS_PER_TRANSACTION} events"
                ))
                .set_hint("Split the import into several transactions."),
            );
        }
        next.set((xid, first + count));
        first
    });
    i64::try_from((lifted << POSITION_INDEX_BITS) | first).expect("bounded by MAX_FULL_XID")
}

#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo_eventstore_position_base_changed() -> &'static pg_sys::Pg_finfo_record {
    const V1_API: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1_API
}

/// `eventstore._position_base_changed()`: queues a relcache invalidation of
/// `eventstore.position_base`, sent to every session when the calling transaction commits.
///
/// # Safety
/// Called by Postgres' function manager.
#[unsafe(no_mangle)]
#[pgrx::pg_guard]
pub unsafe extern "C-unwind" fn eventstore_position_base_changed(
    _fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    let table = base_table();
    if table != pg_sys::InvalidOid {
        // SAFETY: inside a transaction; the invalidation is queued until commit.
        unsafe { pg_sys::CacheInvalidateRelcacheByRelid(table) };
    }
    CACHED_BASE.with(|cached| cached.set(None));
    // SAFETY: a read of the transaction state; the caller has just written the base.
    CHANGED_BY.with(|changed| changed.set(unsafe { pg_sys::GetTopFullTransactionId() }.value));
    pg_sys::Datum::from(0)
}
