//! `eventstore.append(stream text, events jsonb, expected_version bigint DEFAULT NULL)`.
//!
//! One call appends all its events or none: the stream's append lock is taken, its version
//! read and checked against the expectation, positions reserved, and the rows inserted in one
//! statement. A retry of an append whose reply was lost finds its events by id and returns
//! them without writing again.

use std::collections::HashMap;

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::error::{
    concurrent_append, duplicate_event_id, invalid_parameter, on_standby, out_of_order, raise,
    wrong_expected_version,
};
use crate::event_batch::{self, NewEvent};
use crate::events_table::{EventsTable, View};
use crate::limits::MAX_STREAM_BYTES;
use crate::spi::{Connection, Statement};
use crate::{position, stream_lock, wakeup};

/// The four expectations of `expected_version`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ExpectedVersion {
    /// `NULL`: append whatever the stream's version.
    Any,
    /// `-1`: the stream must not exist.
    NoStream,
    /// `-2`: the stream must exist.
    StreamExists,
    /// `n >= 0`: the stream's last event must have version `n`.
    Exact(i64),
}

impl ExpectedVersion {
    pub(crate) const NO_STREAM: i64 = -1;
    pub(crate) const STREAM_EXISTS: i64 = -2;

    fn from_sql(value: Option<i64>) -> Self {
        match value {
            None => Self::Any,
            Some(Self::NO_STREAM) => Self::NoStream,
            Some(Self::STREAM_EXISTS) => Self::StreamExists,
            Some(version) if version >= 0 => Self::Exact(version),
            Some(other) => raise(
                invalid_parameter(format!("expected_version {other} is not valid")).set_hint(
                    "Use NULL (any version), -1 (no stream), -2 (stream exists) or a version >= 0.",
                ),
            ),
        }
    }

    /// Whether a stream whose last version is `current` (-1: absent) meets the expectation.
    fn accepts(self, current: i64) -> bool {
        match self {
            Self::Any => true,
            Self::NoStream => current == -1,
            Self::StreamExists => current >= 0,
            Self::Exact(version) => current == version,
        }
    }

    /// Whether an append with this expectation could have stored its first event at `first`.
    fn could_have_started_at(self, first: i64) -> bool {
        self.accepts(first - 1)
    }

    fn describe(self) -> String {
        match self {
            Self::Any => "any version".to_owned(),
            Self::NoStream => "no stream (-1)".to_owned(),
            Self::StreamExists => "an existing stream (-2)".to_owned(),
            Self::Exact(version) => version.to_string(),
        }
    }
}

/// What `append` returns: the versions and positions of the first and last event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Appended {
    first_version: i64,
    last_version: i64,
    first_position: i64,
    last_position: i64,
}

static INSERT_ONE: Statement = Statement {
    sql: c"INSERT INTO eventstore.events (position, stream, version, type, data, metadata, id) \
           VALUES ($1, $2, $3, $4, $5, $6, $7)",
    arg_types: &[
        pg_sys::INT8OID,
        pg_sys::TEXTOID,
        pg_sys::INT8OID,
        pg_sys::TEXTOID,
        pg_sys::JSONBOID,
        pg_sys::JSONBOID,
        pg_sys::UUIDOID,
    ],
};

static INSERT_MANY: Statement = Statement {
    sql: c"INSERT INTO eventstore.events (position, stream, version, type, data, metadata, id) \
           SELECT $1 + e.n - 1, $2, $3 + e.n - 1, e.type, e.data, e.metadata, e.id \
           FROM unnest($4, $5, $6, $7) WITH ORDINALITY AS e(type, data, metadata, id, n)",
    arg_types: &[
        pg_sys::INT8OID,
        pg_sys::TEXTOID,
        pg_sys::INT8OID,
        pg_sys::TEXTARRAYOID,
        pg_sys::JSONBARRAYOID,
        pg_sys::JSONBARRAYOID,
        pg_sys::UUIDARRAYOID,
    ],
};

#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo_eventstore_append() -> &'static pg_sys::Pg_finfo_record {
    const V1_API: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1_API
}

/// The C entry point of `eventstore.append`, declared in `sql/append.sql`. It takes the
/// `jsonb` argument as a raw datum so events are never converted to text and back.
///
/// # Safety
/// Called by Postgres' function manager with the arguments declared in `sql/append.sql`.
#[unsafe(no_mangle)]
#[pg_guard]
pub unsafe extern "C-unwind" fn eventstore_append(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    refuse_on_standby("append");
    // SAFETY: fcinfo is the live call of eventstore.append.
    let Call {
        stream_datum,
        stream,
        batch,
        expected,
    } = unsafe { Call::read(fcinfo) };
    let outcome = append(stream_datum, stream, &batch, expected);
    let appended = outcome.unwrap_or_else(|WrongVersion { current }| {
        raise(wrong_expected_version(
            stream,
            &expected.describe(),
            current,
        ))
    });
    // SAFETY: fcinfo is the live call; the result type is eventstore.append_result.
    unsafe { result_tuple(fcinfo, Some(appended), None) }
}

#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo_eventstore_try_append() -> &'static pg_sys::Pg_finfo_record {
    const V1_API: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1_API
}

/// The C entry point of `eventstore.try_append`: `append`, except that a stream at another
/// version than expected is reported in the result row (`current_version`, the other columns
/// NULL) instead of raised, so clients get the actual version as data and the caller's
/// transaction stays usable. Nothing is written in that case either.
///
/// # Safety
/// Called by Postgres' function manager with the arguments declared in `sql/append.sql`.
#[unsafe(no_mangle)]
#[pg_guard]
pub unsafe extern "C-unwind" fn eventstore_try_append(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    refuse_on_standby("try_append");
    // SAFETY: fcinfo is the live call of eventstore.try_append.
    let Call {
        stream_datum,
        stream,
        batch,
        expected,
    } = unsafe { Call::read(fcinfo) };
    // SAFETY: fcinfo is the live call; the result type is eventstore.append_attempt.
    match append(stream_datum, stream, &batch, expected) {
        Ok(appended) => unsafe {
            result_tuple(fcinfo, Some(appended), Some(appended.last_version))
        },
        Err(WrongVersion { current }) => unsafe { result_tuple(fcinfo, None, Some(current)) },
    }
}

/// A standby cannot assign transaction ids; say so before anything tries (25006, not XX000).
fn refuse_on_standby(function: &str) {
    // SAFETY: a read of shared recovery state.
    if unsafe { pg_sys::RecoveryInProgress() } {
        raise(on_standby(function));
    }
}

/// The checked arguments of `append` and `try_append`, which share their SQL signature.
struct Call<'a> {
    stream_datum: pg_sys::Datum,
    stream: &'a str,
    batch: Vec<NewEvent>,
    expected: ExpectedVersion,
}

impl Call<'_> {
    /// Reads and checks `(stream text, events jsonb, expected_version bigint)`, raising 22023
    /// for NULLs, bad stream names, bad expectations and malformed events.
    ///
    /// # Safety
    /// `fcinfo` is the live call of a function declared with those arguments.
    unsafe fn read(fcinfo: pg_sys::FunctionCallInfo) -> Self {
        use pgrx::fcinfo::{pg_getarg, pg_getarg_datum};
        // SAFETY: the argument types are those of the SQL declaration.
        let (stream_datum, stream, events, expected) = unsafe {
            let stream_datum = pg_getarg_datum(fcinfo, 0);
            let stream = pg_getarg::<&str>(fcinfo, 0);
            let events = pg_getarg_datum(fcinfo, 1);
            let expected = pg_getarg::<i64>(fcinfo, 2);
            (stream_datum, stream, events, expected)
        };
        let (Some(stream_datum), Some(stream)) = (stream_datum, stream) else {
            raise(invalid_parameter("stream must not be NULL"));
        };
        check_stream_name(stream);
        let Some(events) = events else {
            raise(invalid_parameter("events must not be NULL"));
        };
        let expected = ExpectedVersion::from_sql(expected);
        Call {
            stream_datum,
            stream,
            batch: event_batch::parse(events),
            expected,
        }
    }
}

/// The stream is at `current` (-1: absent), which the expectation does not accept.
struct WrongVersion {
    current: i64,
}

/// Refuses NULL-free but unusable stream names with 22023.
pub(crate) fn check_stream_name(stream: &str) {
    if stream.is_empty() {
        raise(invalid_parameter("stream must not be empty"));
    }
    if stream.len() > MAX_STREAM_BYTES {
        raise(invalid_parameter(format!(
            "stream name is {} bytes long; the limit is {MAX_STREAM_BYTES}",
            stream.len()
        )));
    }
}

fn append(
    stream_datum: pg_sys::Datum,
    stream: &str,
    batch: &[NewEvent],
    expected: ExpectedVersion,
) -> Result<Appended, WrongVersion> {
    stream_lock::lock_stream(stream);
    let table = EventsTable::open();
    let head = table.head(stream_datum, View::Statement);
    let (current, last_position) = head.map_or((-1, -1), |head| (head.version, head.position));

    // SAFETY: a plain read of the session's isolation level.
    if unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as i32 {
        // The transaction's snapshot may predate an append that committed while this one
        // waited for the lock; appending on top of a version it cannot see would be a lost
        // update, so fail the way Postgres fails such a transaction.
        let latest = table
            .head(stream_datum, View::Latest)
            .map_or(-1, |head| head.version);
        if latest != current {
            raise(concurrent_append(stream, current, latest));
        }
    }

    let version_matches = expected.accepts(current);
    let may_be_retry = batch.iter().any(|event| event.id_supplied)
        && (!version_matches
            || matches!(
                expected,
                ExpectedVersion::Any | ExpectedVersion::StreamExists
            ));
    if may_be_retry {
        if let Some(stored) = already_stored(&table, stream, batch, expected) {
            return Ok(stored);
        }
    }
    if !version_matches {
        return Err(WrongVersion { current });
    }

    let count = batch.len() as i64;
    let first_position = position::reserve(batch.len());
    if first_position <= last_position {
        // This transaction took its id before the one that wrote the stream's last event, and
        // waited for that one's lock. Its events would sort before that event in the global
        // log, against the stream's order.
        raise(out_of_order(stream, last_position));
    }
    let first_version = current + 1;
    if table.inserts_directly() {
        table.insert(stream_datum, first_version, first_position, batch);
    } else {
        insert_with_spi(stream_datum, first_version, first_position, batch);
    }
    let last_position = first_position + count - 1;
    wakeup::appended(last_position);
    Ok(Appended {
        first_version,
        last_version: first_version + count - 1,
        first_position,
        last_position,
    })
}

/// If every event of `batch` is already stored, in this stream, at consecutive versions in
/// the batch's order, and the expectation fits where they start, this is the retry of an
/// append that succeeded: return what it returned. Any other stored id is a conflict (23505).
fn already_stored(
    table: &EventsTable,
    stream: &str,
    batch: &[NewEvent],
    expected: ExpectedVersion,
) -> Option<Appended> {
    let found = table.by_id(
        batch
            .iter()
            .filter(|event| event.id_supplied)
            .map(NewEvent::id_datum),
    );
    if found.is_empty() {
        return None;
    }
    let stored: HashMap<uuid::Uuid, (String, i64, i64)> = found
        .into_iter()
        .map(|event| (event.id, (event.stream, event.version, event.position)))
        .collect();

    let first = stored.get(&batch[0].id);
    if let Some((first_stream, first_version, first_position)) = first {
        let is_retry = first_stream == stream
            && expected.could_have_started_at(*first_version)
            && batch.iter().enumerate().all(|(offset, event)| {
                matches!(stored.get(&event.id),
                    Some((s, v, _)) if s == stream && *v == first_version + offset as i64)
            });
        if is_retry {
            let last = &stored[&batch[batch.len() - 1].id];
            return Some(Appended {
                first_version: *first_version,
                last_version: last.1,
                first_position: *first_position,
                last_position: last.2,
            });
        }
    }
    let (id, (used_by, version, _)) = batch
        .iter()
        .find_map(|event| stored.get(&event.id).map(|found| (event.id, found)))
        .expect("at least one id is stored");
    raise(duplicate_event_id(&id.to_string(), used_by, *version));
}

/// The fallback for tables `EventsTable` cannot insert into directly: full INSERT statements.
fn insert_with_spi(
    stream: pg_sys::Datum,
    first_version: i64,
    first_position: i64,
    batch: &[NewEvent],
) {
    let spi = Connection::open();
    let rows = if let [event] = batch {
        spi.execute(
            &INSERT_ONE,
            &[
                Some(pg_sys::Datum::from(first_position)),
                Some(stream),
                Some(pg_sys::Datum::from(first_version)),
                Some(event.event_type),
                Some(event.data),
                Some(event.metadata),
                Some(event.id_datum()),
            ],
        )
    } else {
        // SAFETY: the element datums have the array's element type.
        let (types, data, metadata, ids) = unsafe {
            (
                array(
                    batch.iter().map(|e| e.event_type),
                    pg_sys::TEXTOID,
                    -1,
                    pg_sys::TYPALIGN_INT,
                ),
                array(
                    batch.iter().map(|e| e.data),
                    pg_sys::JSONBOID,
                    -1,
                    pg_sys::TYPALIGN_INT,
                ),
                array(
                    batch.iter().map(|e| e.metadata),
                    pg_sys::JSONBOID,
                    -1,
                    pg_sys::TYPALIGN_INT,
                ),
                array(
                    batch.iter().map(NewEvent::id_datum),
                    pg_sys::UUIDOID,
                    16,
                    pg_sys::TYPALIGN_CHAR,
                ),
            )
        };
        spi.execute(
            &INSERT_MANY,
            &[
                Some(pg_sys::Datum::from(first_position)),
                Some(stream),
                Some(pg_sys::Datum::from(first_version)),
                Some(types),
                Some(data),
                Some(metadata),
                Some(ids),
            ],
        )
    };
    assert_eq!(rows.len(), batch.len(), "every event is inserted");
}

/// A one-dimensional array of by-reference elements.
unsafe fn array(
    elements: impl Iterator<Item = pg_sys::Datum>,
    element_type: pg_sys::Oid,
    element_len: i32,
    align: u8,
) -> pg_sys::Datum {
    let mut elements: Vec<pg_sys::Datum> = elements.collect();
    // SAFETY: the caller passes datums of `element_type`.
    unsafe {
        pg_sys::Datum::from(pg_sys::construct_array(
            elements.as_mut_ptr(),
            elements.len() as i32,
            element_type,
            element_len,
            false,
            align as std::ffi::c_char,
        ))
    }
}

/// The result row: `append_result`'s four columns, then `current_version` when the declared
/// type has it (`append_attempt`). `None` columns are NULL.
unsafe fn result_tuple(
    fcinfo: pg_sys::FunctionCallInfo,
    appended: Option<Appended>,
    current_version: Option<i64>,
) -> pg_sys::Datum {
    // SAFETY: fcinfo is the live call of a function returning a composite type.
    unsafe {
        let mut tupdesc: pg_sys::TupleDesc = std::ptr::null_mut();
        let class = pg_sys::get_call_result_type(fcinfo, std::ptr::null_mut(), &mut tupdesc);
        assert_eq!(
            class,
            pg_sys::TypeFuncClass::TYPEFUNC_COMPOSITE,
            "append returns a row"
        );
        let tupdesc = pg_sys::BlessTupleDesc(tupdesc);
        let columns = [
            appended.map(|a| a.first_version),
            appended.map(|a| a.last_version),
            appended.map(|a| a.first_position),
            appended.map(|a| a.last_position),
            current_version,
        ];
        let width = usize::try_from((*tupdesc).natts).expect("natts >= 0");
        assert!(width == 4 || width == 5, "append returns 4 or 5 columns");
        let mut values: Vec<pg_sys::Datum> = columns[..width]
            .iter()
            .map(|c| pg_sys::Datum::from(c.unwrap_or(0)))
            .collect();
        let mut nulls: Vec<bool> = columns[..width].iter().map(Option::is_none).collect();
        let tuple = pg_sys::heap_form_tuple(tupdesc, values.as_mut_ptr(), nulls.as_mut_ptr());
        pg_sys::HeapTupleHeaderGetDatum((*tuple).t_data)
    }
}
