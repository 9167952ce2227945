//! pg_eventstore: an event store inside PostgreSQL.
//!
//! `CREATE EXTENSION pg_eventstore` creates schema `eventstore` with the event log, the append
//! function (Rust, `append.rs`), the read functions (SQL the planner inlines, `sql/reads.sql`)
//! and the argument checks they share (this file), and persistent subscription groups (SQL,
//! `sql/pg_eventstore--0.1.0--0.2.0.sql`, changed by `sql/pg_eventstore--0.2.0--0.3.0.sql`
//! `sql/pg_eventstore--0.3.0--0.4.0.sql`, which also adds the position base and the roles,
//! and `sql/pg_eventstore--0.4.0--0.5.0.sql`, which leases batches instead of events).
//! Each upgrade script is also part of the install script, and the install scripts of the
//! released versions are kept as they were in `sql/released/`. The README documents the SQL
//! API.

use pgrx::prelude::*;

mod append;
mod error;
mod event_batch;
mod events_table;
mod limits;
mod position;
mod spi;
mod stream_lock;
mod wakeup;

use append::ExpectedVersion;
use error::{invalid_parameter, raise};
use limits::MAX_READ_COUNT;

pgrx::pg_module_magic!(name, version);

/// Sets up the coalesced wake-ups when loaded through `shared_preload_libraries`.
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    wakeup::init();
    position::init();
}

/// How appends wake subscribers on channel `eventstore`: `coalesced` (a background worker per
/// database, the library is preloaded) or `per_transaction` (each appending transaction
/// notifies itself).
#[pg_extern(stable, parallel_safe)]
fn wakeup_mode() -> &'static str {
    wakeup::mode()
}

extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!("../sql/append.sql", name = "append", requires = ["schema"]);
extension_sql_file!(
    "../sql/reads.sql",
    name = "reads",
    requires = [
        "schema",
        _check_stream,
        _check_category,
        _check_count,
        _check_position,
        _check_from_version,
        _check_consumer_group
    ]
);
// Subscription groups: the upgrade script from 0.1.0 is also this part of the install script.
extension_sql_file!(
    "../sql/pg_eventstore--0.1.0--0.2.0.sql",
    name = "groups",
    requires = ["schema", "reads", _check_count, _check_category]
);
// 0.3.0: 42704 for unknown groups, the constraint name on an existing group, from_position
// in the groups view, health(). Also the upgrade script from 0.2.0.
extension_sql_file!(
    "../sql/pg_eventstore--0.2.0--0.3.0.sql",
    name = "release_0_3_0",
    requires = ["groups", "reads", wakeup_mode]
);
// 0.4.0: the position base (positions survive a logical restore), 25006 on a hot standby,
// least-privilege roles. Also the upgrade script from 0.3.0.
extension_sql_file!(
    "../sql/pg_eventstore--0.3.0--0.4.0.sql",
    name = "release_0_4_0",
    requires = [
        "release_0_3_0",
        "append",
        any_version,
        no_stream,
        stream_exists,
        wakeup_mode,
        _check_stream,
        _check_category,
        _check_count,
        _check_position,
        _check_from_version,
        _check_consumer_group
    ]
);
// 0.5.0: groups lease batches of the log as one row each and keep rows per event only for
// exceptions; ordered groups by stream buckets. Also the upgrade script from 0.4.0.
extension_sql_file!(
    "../sql/pg_eventstore--0.4.0--0.5.0.sql",
    name = "release_0_5_0",
    requires = ["release_0_4_0"]
);
extension_sql_file!("../sql/comments.sql", name = "comments", finalize);

/// `expected_version` meaning "whatever the stream's version": `NULL`.
#[pg_extern(immutable, parallel_safe)]
fn any_version() -> Option<i64> {
    None
}

/// `expected_version` meaning "the stream must not exist": `-1`.
#[pg_extern(immutable, parallel_safe)]
fn no_stream() -> i64 {
    ExpectedVersion::NO_STREAM
}

/// `expected_version` meaning "the stream must exist": `-2`.
#[pg_extern(immutable, parallel_safe)]
fn stream_exists() -> i64 {
    ExpectedVersion::STREAM_EXISTS
}

/// Returns `stream`, or raises 22023 when it is NULL, empty or too long.
#[pg_extern(immutable, parallel_safe)]
fn _check_stream(stream: Option<&str>) -> &str {
    let Some(stream) = stream else {
        raise(invalid_parameter("stream must not be NULL"));
    };
    append::check_stream_name(stream);
    stream
}

/// Returns `category`, or raises 22023 when it is NULL, empty or contains `-`.
#[pg_extern(immutable, parallel_safe)]
fn _check_category(category: Option<&str>) -> &str {
    match category {
        None => raise(invalid_parameter("category must not be NULL")),
        Some("") => raise(invalid_parameter("category must not be empty")),
        Some(category) if category.contains('-') => raise(
            invalid_parameter(format!("category \"{category}\" must not contain '-'"))
                .set_hint("The category of stream \"order-42\" is \"order\"."),
        ),
        Some(category) => category,
    }
}

/// Returns `max_count`, or raises 22023 when it is NULL, negative or above the read limit.
#[pg_extern(immutable, parallel_safe)]
fn _check_count(max_count: Option<i32>) -> i32 {
    match max_count {
        Some(count) if (0..=MAX_READ_COUNT).contains(&count) => count,
        Some(count) => raise(
            invalid_parameter(format!(
                "max_count must be between 0 and {MAX_READ_COUNT}, got {count}"
            ))
            .set_hint("Read a long stream or log in pages, continuing after the last event read."),
        ),
        None => raise(invalid_parameter("max_count must not be NULL")),
    }
}

/// Returns `after_position`, or raises 22023 when it is NULL or negative.
#[pg_extern(immutable, parallel_safe)]
fn _check_position(after_position: Option<i64>) -> i64 {
    match after_position {
        Some(position) if position >= 0 => position,
        Some(position) => raise(
            invalid_parameter(format!("after_position must be >= 0, got {position}"))
                .set_hint("Use 0 to read from the beginning."),
        ),
        None => raise(invalid_parameter("after_position must not be NULL")),
    }
}

/// The version a stream read starts at: `from_version` itself, or for a backwards read with
/// `from_version` -1, the stream's end. Raises 22023 for NULLs and other negative versions.
#[pg_extern(immutable, parallel_safe)]
fn _check_from_version(from_version: Option<i64>, backwards: Option<bool>) -> i64 {
    match (from_version, backwards) {
        (_, None) => raise(invalid_parameter("backwards must not be NULL")),
        (None, _) => raise(invalid_parameter("from_version must not be NULL")),
        (Some(-1), Some(true)) => i64::MAX,
        (Some(version), _) if version >= 0 => version,
        (Some(version), Some(backwards)) => raise(
            invalid_parameter(format!("from_version must be >= 0, got {version}")).set_hint(
                if backwards {
                    "Use -1 to read backwards from the end of the stream."
                } else {
                    "Use 0 to read from the start of the stream."
                },
            ),
        ),
    }
}

/// Raises 22023 unless the consumer group arguments are both NULL, or a size >= 1 and a member
/// in `0 .. size`; returns true.
#[pg_extern(immutable, parallel_safe)]
fn _check_consumer_group(member: Option<i32>, size: Option<i32>) -> bool {
    match (member, size) {
        (None, None) => true,
        (Some(member), Some(size)) if size >= 1 && (0..size).contains(&member) => true,
        (Some(member), Some(size)) => raise(invalid_parameter(format!(
            "consumer_group_member must be between 0 and consumer_group_size - 1 \
             (size {size}, member {member})"
        ))),
        _ => raise(invalid_parameter(
            "consumer_group_member and consumer_group_size must be given together",
        )),
    }
}

#[cfg(any(test, feature = "pg_test"))]
mod pg_tests;

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
