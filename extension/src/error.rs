//! Errors raised to the client, each with the SQLSTATE of the README's error table.
//!
//! A raised ERROR aborts the statement (and the caller's transaction or savepoint), so an
//! append that fails has written nothing.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

const SOURCE: &str = "pg_eventstore";

/// Raises `report` as an ERROR. Postgres aborts the statement; this never returns.
pub(crate) fn raise(report: ErrorReport) -> ! {
    report.report(PgLogLevel::ERROR);
    unreachable!("an ERROR report does not return")
}

/// 22023 `invalid_parameter_value`: a malformed event or a bad argument.
#[track_caller]
pub(crate) fn invalid_parameter(message: impl Into<String>) -> ErrorReport {
    ErrorReport::new(
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        message.into(),
        SOURCE,
    )
}

/// 40001 `serialization_failure`: the stream is not at the expected version. The caller
/// re-reads the stream and retries.
#[track_caller]
pub(crate) fn wrong_expected_version(stream: &str, expected: &str, actual: i64) -> ErrorReport {
    ErrorReport::new(
        PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
        format!(
            "wrong expected version for stream \"{stream}\": expected {expected}, actual {actual}"
        ),
        SOURCE,
    )
    .set_detail(format!(
        "Stream \"{stream}\" is at version {actual} (-1: it does not exist)."
    ))
    .set_hint("Re-read the stream, decide again, and retry the append.")
}

/// 40001 `serialization_failure` under REPEATABLE READ or SERIALIZABLE: another transaction
/// appended to the stream after this transaction took its snapshot.
#[track_caller]
pub(crate) fn concurrent_append(stream: &str, seen: i64, latest: i64) -> ErrorReport {
    ErrorReport::new(
        PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
        format!("could not serialize access: stream \"{stream}\" was appended to by a concurrent transaction"),
        SOURCE,
    )
    .set_detail(format!(
        "This transaction's snapshot sees version {seen}; the stream is now at version {latest}."
    ))
    .set_hint("Retry the transaction.")
}

/// 40001 `serialization_failure`: this transaction took its id before the one that wrote the
/// stream's last event, then waited for that one's stream lock. Its events would sort before
/// that event in the global log, against the stream's order; a retry gets a younger id.
#[track_caller]
pub(crate) fn out_of_order(stream: &str, last_position: i64) -> ErrorReport {
    ErrorReport::new(
        PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
        format!(
            "could not serialize access: stream \"{stream}\" was appended to by a transaction \
             younger than this one"
        ),
        SOURCE,
    )
    .set_detail(format!(
        "The stream's last event is at position {last_position}; this transaction's events \
         would sort before it in the global log."
    ))
    .set_hint("Retry the transaction.")
}

/// 23505 `unique_violation`: an event id is already stored elsewhere.
#[track_caller]
pub(crate) fn duplicate_event_id(id: &str, stream: &str, version: i64) -> ErrorReport {
    ErrorReport::new(
        PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION,
        format!("event id {id} is already used by stream \"{stream}\" at version {version}"),
        SOURCE,
    )
    .set_detail(
        "An append whose events all carry the ids already stored, in the same order at the same \
         versions, succeeds without writing; any other reuse of an id is refused.",
    )
    .set_hint("Give each new event a fresh id.")
}

/// 25006 `read_only_sql_transaction`: a write on a hot standby.
#[track_caller]
pub(crate) fn on_standby(what: &str) -> ErrorReport {
    ErrorReport::new(
        PgSqlErrorCode::ERRCODE_READ_ONLY_SQL_TRANSACTION,
        format!("cannot run eventstore.{what} on a hot standby"),
        SOURCE,
    )
    .set_detail("This server is a standby in recovery; it serves reads only.")
    .set_hint("Send writes to the primary.")
}

/// 54000 `program_limit_exceeded`.
#[track_caller]
pub(crate) fn limit_exceeded(message: impl Into<String>) -> ErrorReport {
    ErrorReport::new(
        PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
        message.into(),
        SOURCE,
    )
}
