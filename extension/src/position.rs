//! Global positions: `full transaction id << 20 | index within the transaction`.
//!
//! Ordering by transaction id lets readers hand out exactly the events whose transactions
//! have ended (everything below the snapshot's xmin, see `eventstore._visible_below()`), so a
//! transaction that commits late is never skipped. The per-transaction counter lives in this
//! backend's memory: writers never share a sequence or wait for one another.

use std::cell::Cell;

use pgrx::pg_sys;

use crate::error::{limit_exceeded, raise};
use crate::limits::{MAX_EVENTS_PER_TRANSACTION, POSITION_INDEX_BITS};

/// Transaction ids above this would push a position past `i64::MAX`.
const MAX_FULL_XID: u64 = (i64::MAX as u64) >> POSITION_INDEX_BITS;

thread_local! {
    /// (full transaction id, next free index within it). A new transaction id resets the index;
    /// indexes used by a rolled-back savepoint are simply never reused.
    static NEXT_INDEX: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

/// Reserves `count` consecutive positions in the current top-level transaction, assigning it a
/// transaction id if it has none yet, and returns the first.
pub(crate) fn reserve(count: usize) -> i64 {
    // SAFETY: called inside a transaction; assigns the top-level xid when needed.
    let xid = unsafe { pg_sys::GetTopFullTransactionId() }.value;
    if xid > MAX_FULL_XID {
        raise(limit_exceeded(format!(
            "transaction id {xid} no longer fits in a 63-bit event position"
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
    i64::try_from((xid << POSITION_INDEX_BITS) | first).expect("bounded by MAX_FULL_XID")
}
