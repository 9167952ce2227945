//! Direct access to `eventstore.events` for the append path: the stream-head probe, the
//! event-id probe of a possible retry, and the inserts, through one opened relation.
//!
//! Each append reads its stream's head and inserts a row. Done as nested SQL statements, each
//! costs a full executor cycle (plan revalidation, executor start and end, SPI contexts), which
//! is more than the work itself. Instead the head is one backward probe of the
//! `(stream, version)` index, and rows go in through `ExecSimpleRelationInsert`, the path
//! PostgreSQL's logical replication apply uses: it checks constraints, fires row triggers and
//! maintains every index. Tables it does not cover (INSERT statement triggers, row-level
//! security, columns added by hand) take the SPI fallback in `append.rs`.

use std::ffi::CStr;

use pgrx::pg_sys;

use crate::event_batch::NewEvent;

/// The version and position of a stream's last event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StreamHead {
    pub(crate) version: i64,
    pub(crate) position: i64,
}

/// Where an event with a given id is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StoredEvent {
    pub(crate) id: uuid::Uuid,
    pub(crate) stream: String,
    pub(crate) version: i64,
    pub(crate) position: i64,
}

/// Which committed state a head probe looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum View {
    /// What a statement of this transaction would see now: a fresh snapshot under READ
    /// COMMITTED, the transaction's snapshot under REPEATABLE READ and SERIALIZABLE.
    Statement,
    /// The latest committed state, whatever the isolation level.
    Latest,
}

const COLUMNS: [&CStr; 8] = [
    c"position",
    c"stream",
    c"version",
    c"type",
    c"data",
    c"metadata",
    c"id",
    c"recorded_at",
];

/// Executor state for inserting rows directly.
struct Inserter {
    estate: *mut pg_sys::EState,
    result_rel: *mut pg_sys::ResultRelInfo,
    slot: *mut pg_sys::TupleTableSlot,
    /// 0-based attribute index of each of `COLUMNS`.
    columns: [usize; 8],
}

/// `eventstore.events`, opened for appending until dropped.
pub(crate) struct EventsTable {
    rel: pg_sys::Relation,
    /// The `(stream, version)` index.
    stream_index: pg_sys::Relation,
    /// The `id` index (`events_id_key`).
    id_index: pg_sys::Relation,
    /// 1-based attribute numbers of the columns the probes read.
    version_attribute: i32,
    position_attribute: i32,
    stream_attribute: i32,
    id_attribute: i32,
    /// Present when rows can be inserted directly; otherwise they go through SPI.
    inserter: Option<Inserter>,
}

impl EventsTable {
    /// Opens the table with the lock an INSERT takes. The caller's right to append is
    /// EXECUTE on `append` (granted to `eventstore_writer`), not INSERT on the table, which
    /// would let it write rows past append's checks; only the SPI fallback, a full INSERT
    /// statement, needs INSERT.
    pub(crate) fn open() -> EventsTable {
        // SAFETY: inside a transaction; what is opened here is closed in `drop`, and an ERROR
        // in between is cleaned up by the transaction abort.
        unsafe {
            let namespace = pg_sys::get_namespace_oid(c"eventstore".as_ptr(), false);
            let relid = relation_oid(c"events", namespace);
            let stream_index_oid = relation_oid(c"events_stream_version_key", namespace);
            let id_index_oid = relation_oid(c"events_id_key", namespace);
            let rel = pg_sys::table_open(relid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE);
            let inserter = Inserter::new(rel);
            let index = |oid| match &inserter {
                Some(inserter) => opened_index(inserter.result_rel, oid),
                None => pg_sys::index_open(oid, pg_sys::RowExclusiveLock as pg_sys::LOCKMODE),
            };
            let (stream_index, id_index) = (index(stream_index_oid), index(id_index_oid));
            let tupdesc = (*rel).rd_att;
            let attribute_number = |name: &CStr| {
                let index = attribute_index(tupdesc, name).expect("a column of eventstore.events");
                index as i32 + 1
            };
            EventsTable {
                rel,
                stream_index,
                id_index,
                version_attribute: attribute_number(c"version"),
                position_attribute: attribute_number(c"position"),
                stream_attribute: attribute_number(c"stream"),
                id_attribute: attribute_number(c"id"),
                inserter,
            }
        }
    }

    /// Whether `insert` can be used; otherwise the caller inserts through SPI.
    pub(crate) fn inserts_directly(&self) -> bool {
        self.inserter.is_some()
    }

    /// The head of `stream` (a `text` datum), or `None` when the stream has no events.
    pub(crate) fn head(&self, stream: pg_sys::Datum, view: View) -> Option<StreamHead> {
        // SAFETY: the relation and index are open; the scan is ended before returning.
        unsafe {
            let snapshot = pg_sys::RegisterSnapshot(match view {
                View::Statement => pg_sys::GetTransactionSnapshot(),
                View::Latest => pg_sys::GetLatestSnapshot(),
            });
            let slot = pg_sys::table_slot_create(self.rel, std::ptr::null_mut());
            let scan = pg_sys::index_beginscan(self.rel, self.stream_index, snapshot, 1, 0);
            let mut key: pg_sys::ScanKeyData = std::mem::zeroed();
            pg_sys::ScanKeyEntryInitialize(
                &mut key,
                0,
                1,
                pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
                pg_sys::InvalidOid,
                *(*self.stream_index).rd_indcollation,
                pg_sys::Oid::from(pg_sys::F_TEXTEQ),
                stream,
            );
            pg_sys::index_rescan(scan, &mut key, 1, std::ptr::null_mut(), 0);
            let found = pg_sys::index_getnext_slot(
                scan,
                pg_sys::ScanDirection::BackwardScanDirection,
                slot,
            );
            let head = found.then(|| StreamHead {
                version: column_i64(slot, self.version_attribute),
                position: column_i64(slot, self.position_attribute),
            });
            pg_sys::index_endscan(scan);
            pg_sys::ExecDropSingleTupleTableSlot(slot);
            pg_sys::UnregisterSnapshot(snapshot);
            head
        }
    }

    /// The stored events among `ids` (`uuid` datums), as a statement of this transaction sees
    /// them now: one probe of the `id` index each. A nested `SELECT … WHERE id = ANY(…)`
    /// cost an executor cycle, more than half as much again as the whole append.
    pub(crate) fn by_id(&self, ids: impl IntoIterator<Item = pg_sys::Datum>) -> Vec<StoredEvent> {
        let mut stored = Vec::new();
        // SAFETY: the relation and index are open; the scan is ended before returning, and
        // each row's columns are copied out before the next probe.
        unsafe {
            // As SPI runs a statement: a copy of the transaction's snapshot that also sees
            // this transaction's own earlier appends.
            pg_sys::PushCopiedSnapshot(pg_sys::GetTransactionSnapshot());
            pg_sys::UpdateActiveSnapshotCommandId();
            let snapshot = pg_sys::GetActiveSnapshot();
            let slot = pg_sys::table_slot_create(self.rel, std::ptr::null_mut());
            let scan = pg_sys::index_beginscan(self.rel, self.id_index, snapshot, 1, 0);
            for id in ids {
                let mut key: pg_sys::ScanKeyData = std::mem::zeroed();
                pg_sys::ScanKeyEntryInitialize(
                    &mut key,
                    0,
                    1,
                    pg_sys::BTEqualStrategyNumber as pg_sys::StrategyNumber,
                    pg_sys::InvalidOid,
                    pg_sys::InvalidOid,
                    pg_sys::Oid::from(pg_sys::F_UUID_EQ),
                    id,
                );
                pg_sys::index_rescan(scan, &mut key, 1, std::ptr::null_mut(), 0);
                if pg_sys::index_getnext_slot(
                    scan,
                    pg_sys::ScanDirection::ForwardScanDirection,
                    slot,
                ) {
                    let mut is_null = false;
                    let id = pg_sys::slot_getattr(slot, self.id_attribute, &mut is_null);
                    let id = <pgrx::datum::Uuid as pgrx::FromDatum>::from_datum(id, is_null)
                        .expect("id is NOT NULL");
                    let stream = pg_sys::slot_getattr(slot, self.stream_attribute, &mut is_null);
                    let stream = <String as pgrx::FromDatum>::from_datum(stream, is_null)
                        .expect("stream is NOT NULL");
                    stored.push(StoredEvent {
                        id: uuid::Uuid::from_bytes(*id.as_bytes()),
                        stream,
                        version: column_i64(slot, self.version_attribute),
                        position: column_i64(slot, self.position_attribute),
                    });
                }
            }
            pg_sys::index_endscan(scan);
            pg_sys::ExecDropSingleTupleTableSlot(slot);
            pg_sys::PopActiveSnapshot();
        }
        stored
    }

    /// Inserts `batch` at consecutive versions and positions. Only when `inserts_directly`.
    pub(crate) fn insert(
        &self,
        stream: pg_sys::Datum,
        first_version: i64,
        first_position: i64,
        batch: &[NewEvent],
    ) {
        let inserter = self.inserter.as_ref().expect("direct inserts are possible");
        // SAFETY: the executor state belongs to this open table; each row fills every column
        // of the slot with a datum of the column's type.
        unsafe {
            let recorded_at = pg_sys::Datum::from(pg_sys::GetCurrentStatementStartTimestamp());
            for (offset, event) in batch.iter().enumerate() {
                let offset = offset as i64;
                let values = [
                    pg_sys::Datum::from(first_position + offset),
                    stream,
                    pg_sys::Datum::from(first_version + offset),
                    event.event_type,
                    event.data,
                    event.metadata,
                    event.id_datum(),
                    recorded_at,
                ];
                let slot = inserter.slot;
                pg_sys::ExecClearTuple(slot);
                for (value, &column) in values.iter().zip(&inserter.columns) {
                    *(*slot).tts_values.add(column) = *value;
                    *(*slot).tts_isnull.add(column) = false;
                }
                pg_sys::ExecStoreVirtualTuple(slot);
                pg_sys::ExecSimpleRelationInsert(inserter.result_rel, inserter.estate, slot);
                let per_tuple = (*inserter.estate).es_per_tuple_exprcontext;
                if !per_tuple.is_null() {
                    pg_sys::MemoryContextReset((*per_tuple).ecxt_per_tuple_memory);
                }
            }
            // Later statements, and later appends in this statement, see the new rows.
            pg_sys::CommandCounterIncrement();
        }
    }
}

impl Drop for EventsTable {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // An ERROR is on its way: PostgreSQL may be mid-operation, and the transaction
            // abort releases the relation, the indexes and the executor state itself.
            return;
        }
        // SAFETY: releases exactly what `open` acquired; locks stay until the transaction ends.
        unsafe {
            match self.inserter.take() {
                Some(inserter) => inserter.finish(),
                None => {
                    pg_sys::index_close(self.stream_index, pg_sys::NoLock as pg_sys::LOCKMODE);
                    pg_sys::index_close(self.id_index, pg_sys::NoLock as pg_sys::LOCKMODE);
                }
            }
            pg_sys::table_close(self.rel, pg_sys::NoLock as pg_sys::LOCKMODE);
        }
    }
}

impl Inserter {
    /// Executor state for direct inserts, or `None` when the table needs the full executor:
    /// INSERT statement triggers or transition tables, row-level security, or columns other
    /// than the extension's.
    unsafe fn new(rel: pg_sys::Relation) -> Option<Inserter> {
        // SAFETY: `rel` is open; the setup mirrors PostgreSQL's logical replication apply.
        unsafe {
            let form = &*(*rel).rd_rel;
            if form.relkind != pg_sys::RELKIND_RELATION as std::ffi::c_char || form.relrowsecurity {
                return None;
            }
            if needs_statement_triggers((*rel).trigdesc) {
                return None;
            }
            let columns = column_indexes((*rel).rd_att)?;

            let estate = pg_sys::CreateExecutorState();
            let rte: *mut pg_sys::RangeTblEntry =
                pg_sys::palloc0(std::mem::size_of::<pg_sys::RangeTblEntry>()).cast();
            (*rte).type_ = pg_sys::NodeTag::T_RangeTblEntry;
            (*rte).rtekind = pg_sys::RTEKind::RTE_RELATION;
            (*rte).relid = (*rel).rd_id;
            (*rte).relkind = form.relkind;
            (*rte).rellockmode = pg_sys::RowExclusiveLock as pg_sys::LOCKMODE;
            pg_sys::ExecInitRangeTable(estate, pg_sys::lappend(std::ptr::null_mut(), rte.cast()));
            let result_rel: *mut pg_sys::ResultRelInfo =
                pg_sys::palloc0(std::mem::size_of::<pg_sys::ResultRelInfo>()).cast();
            (*result_rel).type_ = pg_sys::NodeTag::T_ResultRelInfo;
            pg_sys::InitResultRelInfo(result_rel, rel, 1, std::ptr::null_mut(), 0);
            // Lets ExecGetTriggerResultRel find it, as in logical replication apply.
            (*estate).es_opened_result_relations =
                pg_sys::lappend((*estate).es_opened_result_relations, result_rel.cast());
            (*estate).es_output_cid = pg_sys::GetCurrentCommandId(true);
            pg_sys::AfterTriggerBeginQuery();
            pg_sys::ExecOpenIndices(result_rel, false);
            let slot =
                pg_sys::ExecInitExtraTupleSlot(estate, (*rel).rd_att, &pg_sys::TTSOpsVirtual);
            Some(Inserter {
                estate,
                result_rel,
                slot,
                columns,
            })
        }
    }

    unsafe fn finish(self) {
        // SAFETY: tears down what `new` built, in the order logical replication apply does.
        unsafe {
            pg_sys::ExecCloseIndices(self.result_rel);
            pg_sys::AfterTriggerEndQuery(self.estate);
            pg_sys::ExecResetTupleTable((*self.estate).es_tupleTable, false);
            pg_sys::FreeExecutorState(self.estate);
        }
    }
}

/// The extension's own statement trigger, which handles loads of events by COPY or INSERT
/// (`eventstore._events_loaded()`) and has nothing to do for an append.
const LOAD_TRIGGER: &CStr = c"events_loaded";

/// Whether the table has INSERT statement triggers other than `LOAD_TRIGGER`, or transition
/// tables, which only the full executor fires.
unsafe fn needs_statement_triggers(triggers: *const pg_sys::TriggerDesc) -> bool {
    if triggers.is_null() {
        return false;
    }
    // SAFETY: the trigger descriptor of an open relation, `numtriggers` entries long.
    unsafe {
        let all = std::slice::from_raw_parts(
            (*triggers).triggers,
            usize::try_from((*triggers).numtriggers).unwrap_or(0),
        );
        all.iter().any(|trigger| {
            let kind = i32::from(trigger.tgtype);
            let on_insert = kind & pg_sys::TRIGGER_TYPE_INSERT as i32 != 0;
            let per_statement = kind & pg_sys::TRIGGER_TYPE_ROW as i32 == 0;
            on_insert
                && (!trigger.tgnewtable.is_null()
                    || (per_statement && CStr::from_ptr(trigger.tgname) != LOAD_TRIGGER))
        })
    }
}

/// The 0-based index of live column `name` in `tupdesc`.
unsafe fn attribute_index(tupdesc: pg_sys::TupleDesc, name: &CStr) -> Option<usize> {
    // SAFETY: `tupdesc` is a valid descriptor with `natts` attributes.
    unsafe {
        (0..(*tupdesc).natts as usize).find(|&i| {
            let attr = &*(*tupdesc).attrs.as_ptr().add(i);
            !attr.attisdropped && CStr::from_ptr(attr.attname.data.as_ptr()) == name
        })
    }
}

/// The attribute index of each of `COLUMNS`, or `None` if one is missing or the table has
/// other live columns.
unsafe fn column_indexes(tupdesc: pg_sys::TupleDesc) -> Option<[usize; 8]> {
    let mut indexes = [0; 8];
    for (index, name) in indexes.iter_mut().zip(COLUMNS) {
        // SAFETY: `tupdesc` is the open relation's descriptor.
        *index = unsafe { attribute_index(tupdesc, name) }?;
    }
    // SAFETY: as above.
    let live_columns = unsafe {
        (0..(*tupdesc).natts as usize)
            .filter(|&i| !(*(*tupdesc).attrs.as_ptr().add(i)).attisdropped)
            .count()
    };
    (live_columns == COLUMNS.len()).then_some(indexes)
}

/// The open index `index_oid` among the result relation's indexes.
unsafe fn opened_index(
    result_rel: *mut pg_sys::ResultRelInfo,
    index_oid: pg_sys::Oid,
) -> pg_sys::Relation {
    // SAFETY: ExecOpenIndices filled `ri_IndexRelationDescs` with `ri_NumIndices` relations.
    unsafe {
        (0..(*result_rel).ri_NumIndices as usize)
            .map(|i| *(*result_rel).ri_IndexRelationDescs.add(i))
            .find(|&index| (*index).rd_id == index_oid)
            .expect("the store's indexes are among the table's indexes")
    }
}

unsafe fn relation_oid(name: &CStr, namespace: pg_sys::Oid) -> pg_sys::Oid {
    // SAFETY: a syscache lookup by name.
    let oid = unsafe { pg_sys::get_relname_relid(name.as_ptr(), namespace) };
    assert_ne!(oid, pg_sys::InvalidOid, "eventstore.{name:?} is missing");
    oid
}

unsafe fn column_i64(slot: *mut pg_sys::TupleTableSlot, attribute: i32) -> i64 {
    let mut is_null = false;
    // SAFETY: the slot holds a row of eventstore.events; `attribute` is a NOT NULL bigint.
    let datum = unsafe { pg_sys::slot_getattr(slot, attribute, &mut is_null) };
    assert!(
        !is_null,
        "attribute {attribute} of eventstore.events is NOT NULL"
    );
    datum.value() as i64
}
