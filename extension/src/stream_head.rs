//! The last event of a stream: one backward probe of the `(stream, version)` index.
//!
//! Every append reads its stream's head. Through SPI that is a full executor cycle (plan
//! revalidation, executor start and end) costing more than the probe itself, so the index is
//! scanned directly here.

use pgrx::pg_sys;

/// The version and position of a stream's last event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StreamHead {
    pub(crate) version: i64,
    pub(crate) position: i64,
}

/// Which committed state to look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum View {
    /// What a statement of this transaction would see now: a fresh snapshot under READ
    /// COMMITTED, the transaction's snapshot under REPEATABLE READ and SERIALIZABLE.
    Statement,
    /// The latest committed state, whatever the isolation level.
    Latest,
}

/// Reads the head of `stream` (a `text` datum), or `None` when the stream has no events.
pub(crate) fn read(stream: pg_sys::Datum, view: View) -> Option<StreamHead> {
    // SAFETY: inside a transaction; every object opened here is closed before returning, and
    // an ERROR in between is cleaned up by the transaction abort.
    unsafe {
        let namespace = pg_sys::get_namespace_oid(c"eventstore".as_ptr(), false);
        let events = relation_oid(c"events", namespace);
        let index_oid = relation_oid(c"events_stream_version_key", namespace);
        let version_column = pg_sys::get_attnum(events, c"version".as_ptr());
        let position_column = pg_sys::get_attnum(events, c"position".as_ptr());

        let lock = pg_sys::AccessShareLock as pg_sys::LOCKMODE;
        let heap = pg_sys::relation_open(events, lock);
        let index = pg_sys::index_open(index_oid, lock);
        let snapshot = pg_sys::RegisterSnapshot(match view {
            View::Statement => pg_sys::GetTransactionSnapshot(),
            View::Latest => pg_sys::GetLatestSnapshot(),
        });
        let slot = pg_sys::table_slot_create(heap, std::ptr::null_mut());
        let scan = pg_sys::index_beginscan(heap, index, snapshot, 1, 0);
        let mut key: pg_sys::ScanKeyData = std::mem::zeroed();
        pg_sys::ScanKeyEntryInitialize(
            &mut key,
            0,
            1,
            pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
            pg_sys::InvalidOid,
            *(*index).rd_indcollation,
            pg_sys::Oid::from(pg_sys::F_TEXTEQ),
            stream,
        );
        pg_sys::index_rescan(scan, &mut key, 1, std::ptr::null_mut(), 0);
        let head =
            pg_sys::index_getnext_slot(scan, pg_sys::ScanDirection::BackwardScanDirection, slot)
                .then(|| StreamHead {
                    version: column_i64(slot, version_column),
                    position: column_i64(slot, position_column),
                });
        pg_sys::index_endscan(scan);
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        pg_sys::UnregisterSnapshot(snapshot);
        pg_sys::index_close(index, pg_sys::NoLock as pg_sys::LOCKMODE);
        pg_sys::relation_close(heap, pg_sys::NoLock as pg_sys::LOCKMODE);
        head
    }
}

unsafe fn relation_oid(name: &std::ffi::CStr, namespace: pg_sys::Oid) -> pg_sys::Oid {
    // SAFETY: a syscache lookup by name.
    let oid = unsafe { pg_sys::get_relname_relid(name.as_ptr(), namespace) };
    assert_ne!(oid, pg_sys::InvalidOid, "eventstore.{name:?} is missing");
    oid
}

unsafe fn column_i64(slot: *mut pg_sys::TupleTableSlot, column: pg_sys::AttrNumber) -> i64 {
    let mut is_null = false;
    // SAFETY: the slot holds a tuple of eventstore.events; the column is a NOT NULL bigint.
    let datum = unsafe { pg_sys::slot_getattr(slot, column.into(), &mut is_null) };
    assert!(!is_null, "column {column} of eventstore.events is NOT NULL");
    datum.value() as i64
}
