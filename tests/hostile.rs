//! Hostile input: generated calls of every function of the SQL API, over the wire, with
//! random and malformed JSON (NUL bytes, invalid escapes, huge and deeply nested documents),
//! extreme integers and random names and options. Every failure must carry one of the
//! documented SQLSTATEs (never XX000), the server must never restart, and a failed call must
//! write nothing, which the test checks by counting rows around each call.

use std::collections::BTreeMap;

use pg_eventstore_tests::{stored_rows, TestDb};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use sqlx::PgConnection;

/// How many calls the test makes.
const CALLS: u32 = 10_000;

/// The SQLSTATEs a call may fail with: the API's own (README, "Errors") and PostgreSQL's for
/// values that are not valid input of the argument's type.
const DOCUMENTED: &[(&str, &str)] = &[
    (
        "22023",
        "invalid_parameter_value: a bad argument or malformed event",
    ),
    ("40001", "serialization_failure: wrong expected version"),
    (
        "23505",
        "unique_violation: an event id used elsewhere, a group that exists",
    ),
    ("42704", "undefined_object: an unknown group"),
    ("54000", "program_limit_exceeded"),
    (
        "22P02",
        "invalid_text_representation: not JSON, not an interval",
    ),
    ("22P05", "untranslatable_character: \\u0000 in JSON"),
    ("22021", "character_not_in_repertoire: a NUL byte in text"),
    ("54001", "statement_too_complex: JSON nested too deeply"),
    ("22007", "invalid_datetime_format: a malformed interval"),
    ("22008", "datetime_field_overflow: an interval out of range"),
    ("22015", "interval_field_overflow"),
];

#[derive(Clone, Debug)]
enum Call {
    Append {
        stream: String,
        events: String,
        expected: Option<i64>,
        attempt: bool,
    },
    ReadStream {
        stream: String,
        from: i64,
        count: i32,
        backwards: bool,
    },
    ReadAll {
        after: i64,
        count: i32,
        types: Option<Vec<String>>,
        categories: Option<Vec<String>>,
    },
    ReadCategory {
        category: String,
        after: i64,
        count: i32,
        member: Option<i32>,
        size: Option<i32>,
    },
    StreamVersion {
        stream: String,
    },
    CreateGroup {
        name: String,
        categories: Option<Vec<String>>,
        types: Option<Vec<String>>,
        from: i64,
        attempts: i32,
        lease: String,
        ordered: bool,
    },
    AlterGroup {
        name: String,
        categories: Option<Vec<String>>,
        from: Option<i64>,
        attempts: Option<i32>,
        lease: Option<String>,
        ordered: Option<bool>,
    },
    DeleteGroup {
        name: String,
    },
    Fetch {
        name: String,
        consumer: String,
        count: i32,
    },
    Settle {
        how: &'static str,
        name: String,
        consumer: String,
        positions: Option<Vec<i64>>,
        retry_after: String,
        reason: Option<String>,
    },
    Parked {
        name: String,
    },
    Release {
        how: &'static str,
        name: String,
        positions: Option<Vec<i64>>,
    },
}

fn big_i64() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(i64::MIN),
        Just(i64::MAX),
        Just(-2i64),
        Just(-1i64),
        Just(0i64),
        Just(i64::MAX >> 20),
        Just((i64::MAX >> 20) + 1),
        0..10i64,
        any::<i64>(),
    ]
}

fn big_i32() -> impl Strategy<Value = i32> {
    prop_oneof![
        Just(i32::MIN),
        Just(i32::MAX),
        Just(-1),
        Just(0),
        Just(100_000),
        Just(100_001),
        1..50i32,
        any::<i32>(),
    ]
}

/// Names: plausible ones (so calls meet existing streams and groups), empty, oversized,
/// unicode, and with NUL bytes.
fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["order-1", "order-2", "user-ada", "g1", "g2", "w1"])
            .prop_map(str::to_owned),
        2 => "[a-z]{1,6}(-[0-9a-z]{0,4})?",
        1 => Just(String::new()),
        1 => (1000..1100usize).prop_map(|n| "x".repeat(n)),
        1 => (200..202usize).prop_map(|n| "g".repeat(n)),
        2 => any::<String>(),
        1 => "[a-z]{0,3}\u{0}[a-z]{0,3}",
    ]
}

fn names() -> impl Strategy<Value = Option<Vec<String>>> {
    prop::option::of(prop::collection::vec(name(), 0..4))
}

/// Arbitrary JSON values, nested a little.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        any::<String>().prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::btree_map(any::<String>(), inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// One event as a client might send it, or mangled.
fn event_object() -> impl Strategy<Value = serde_json::Value> {
    let id = prop_oneof![
        Just(None),
        Just(Some(serde_json::json!(uuid::Uuid::new_v4()))),
        Just(Some(serde_json::json!("not-a-uuid"))),
        Just(Some(serde_json::json!(42))),
        Just(Some(serde_json::json!(
            "00000000-0000-0000-0000-000000000001"
        ))),
    ];
    (
        prop_oneof![4 => name().prop_map(serde_json::Value::from), 1 => json_value()],
        json_value(),
        prop_oneof![Just(None), json_value().prop_map(Some)],
        id,
    )
        .prop_map(|(event_type, data, metadata, id)| {
            let mut event = serde_json::Map::new();
            event.insert("type".into(), event_type);
            event.insert("data".into(), data);
            if let Some(metadata) = metadata {
                event.insert("metadata".into(), metadata);
            }
            if let Some(id) = id {
                event.insert("id".into(), id);
            }
            serde_json::Value::Object(event)
        })
}

/// The `events` argument as text: well-formed batches, other JSON, broken JSON, NUL bytes,
/// escapes PostgreSQL cannot store, huge and deeply nested documents.
fn events_text() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::collection::vec(event_object(), 0..4)
            .prop_map(|events| serde_json::Value::from(events).to_string()),
        2 => json_value().prop_map(|v| v.to_string()),
        1 => any::<String>(),
        1 => Just(r#"[{"type": "t", "data": "\u0000"}]"#.to_owned()),
        1 => Just(r#"[{"type": "t", "data": "\ud800"}]"#.to_owned()),
        1 => Just("[{\"type\": \"t\u{0}\", \"data\": 1}]".to_owned()),
        1 => prop::sample::select(vec![100usize, 10_000, 200_000]).prop_map(|depth| {
            format!(
                r#"[{{"type": "deep", "data": {}{}}}]"#,
                "[".repeat(depth),
                "]".repeat(depth)
            )
        }),
        1 => (1usize..3).prop_map(|megabytes| {
            format!(
                r#"[{{"type": "huge", "data": "{}"}}]"#,
                "x".repeat(megabytes << 20)
            )
        }),
    ]
}

fn interval() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "1 second",
            "30 seconds",
            "0",
            "-1 day",
            "2 days",
            "garbage",
            "178000000 years",
            "infinity",
            "1 day 1 microsecond",
        ])
        .prop_map(str::to_owned),
        any::<String>(),
    ]
}

fn positions() -> impl Strategy<Value = Option<Vec<i64>>> {
    prop::option::of(prop::collection::vec(big_i64(), 0..5))
}

fn call() -> impl Strategy<Value = Call> {
    prop_oneof![
        6 => (name(), events_text(), prop::option::of(big_i64()), any::<bool>()).prop_map(
            |(stream, events, expected, attempt)| Call::Append { stream, events, expected, attempt }
        ),
        2 => (name(), big_i64(), big_i32(), any::<bool>()).prop_map(
            |(stream, from, count, backwards)| Call::ReadStream { stream, from, count, backwards }
        ),
        2 => (big_i64(), big_i32(), names(), names()).prop_map(
            |(after, count, types, categories)| Call::ReadAll { after, count, types, categories }
        ),
        2 => (name(), big_i64(), big_i32(), prop::option::of(big_i32()), prop::option::of(big_i32()))
            .prop_map(|(category, after, count, member, size)| Call::ReadCategory {
                category, after, count, member, size
            }),
        1 => name().prop_map(|stream| Call::StreamVersion { stream }),
        2 => (name(), names(), names(), big_i64(), big_i32(), interval(), any::<bool>()).prop_map(
            |(name, categories, types, from, attempts, lease, ordered)| Call::CreateGroup {
                name, categories, types, from, attempts, lease, ordered
            }
        ),
        1 => (
            name(),
            names(),
            prop::option::of(big_i64()),
            prop::option::of(big_i32()),
            prop::option::of(interval()),
            prop::option::of(any::<bool>()),
        )
            .prop_map(|(name, categories, from, attempts, lease, ordered)| Call::AlterGroup {
                name, categories, from, attempts, lease, ordered
            }),
        1 => name().prop_map(|name| Call::DeleteGroup { name }),
        3 => (name(), name(), big_i32()).prop_map(|(name, consumer, count)| Call::Fetch {
            name, consumer, count
        }),
        3 => (
            prop::sample::select(vec!["ack", "nack", "park"]),
            name(),
            name(),
            positions(),
            interval(),
            prop::option::of(any::<String>()),
        )
            .prop_map(|(how, name, consumer, positions, retry_after, reason)| Call::Settle {
                how, name, consumer, positions, retry_after, reason
            }),
        1 => name().prop_map(|name| Call::Parked { name }),
        1 => (prop::sample::select(vec!["replay_parked", "drop_parked"]), name(), positions())
            .prop_map(|(how, name, positions)| Call::Release { how, name, positions }),
    ]
}

async fn run(conn: &mut PgConnection, call: &Call) -> Result<(), sqlx::Error> {
    match call {
        Call::Append {
            stream,
            events,
            expected,
            attempt,
        } => {
            let function = if *attempt { "try_append" } else { "append" };
            sqlx::query(&format!(
                "SELECT * FROM eventstore.{function}($1, $2::jsonb, $3)"
            ))
            .bind(stream)
            .bind(events)
            .bind(expected)
            .execute(conn)
            .await
        }
        Call::ReadStream {
            stream,
            from,
            count,
            backwards,
        } => {
            sqlx::query("SELECT count(*) FROM eventstore.read_stream($1, $2, $3, $4)")
                .bind(stream)
                .bind(from)
                .bind(count)
                .bind(backwards)
                .execute(conn)
                .await
        }
        Call::ReadAll {
            after,
            count,
            types,
            categories,
        } => {
            sqlx::query("SELECT count(*) FROM eventstore.read_all($1, $2, $3, $4)")
                .bind(after)
                .bind(count)
                .bind(types)
                .bind(categories)
                .execute(conn)
                .await
        }
        Call::ReadCategory {
            category,
            after,
            count,
            member,
            size,
        } => {
            sqlx::query("SELECT count(*) FROM eventstore.read_category($1, $2, $3, $4, $5)")
                .bind(category)
                .bind(after)
                .bind(count)
                .bind(member)
                .bind(size)
                .execute(conn)
                .await
        }
        Call::StreamVersion { stream } => {
            sqlx::query("SELECT eventstore.stream_version($1)")
                .bind(stream)
                .execute(conn)
                .await
        }
        Call::CreateGroup {
            name,
            categories,
            types,
            from,
            attempts,
            lease,
            ordered,
        } => {
            sqlx::query("SELECT eventstore.create_group($1, $2, $3, $4, $5, $6::interval, $7)")
                .bind(name)
                .bind(categories)
                .bind(types)
                .bind(from)
                .bind(attempts)
                .bind(lease)
                .bind(ordered)
                .execute(conn)
                .await
        }
        Call::AlterGroup {
            name,
            categories,
            from,
            attempts,
            lease,
            ordered,
        } => {
            sqlx::query(
                "SELECT eventstore.alter_group($1, categories => $2, from_position => $3, \
                        max_attempts => $4, lease_timeout => $5::interval, \
                        ordered_by_stream => $6)",
            )
            .bind(name)
            .bind(categories)
            .bind(from)
            .bind(attempts)
            .bind(lease)
            .bind(ordered)
            .execute(conn)
            .await
        }
        Call::DeleteGroup { name } => {
            sqlx::query("SELECT eventstore.delete_group($1)")
                .bind(name)
                .execute(conn)
                .await
        }
        Call::Fetch {
            name,
            consumer,
            count,
        } => {
            sqlx::query("SELECT count(*) FROM eventstore.fetch($1, $2, $3)")
                .bind(name)
                .bind(consumer)
                .bind(count)
                .execute(conn)
                .await
        }
        Call::Settle {
            how,
            name,
            consumer,
            positions,
            retry_after,
            reason,
        } => {
            let sql = match *how {
                "ack" => "SELECT eventstore.ack($1, $2, $3)".to_owned(),
                "nack" => "SELECT eventstore.nack($1, $2, $3, $4::interval, $5)".to_owned(),
                _ => "SELECT eventstore.park($1, $2, $3, $5) FROM (SELECT $4::text) AS unused"
                    .to_owned(),
            };
            let query = sqlx::query(&sql).bind(name).bind(consumer).bind(positions);
            let query = if *how == "ack" {
                query
            } else {
                query.bind(retry_after).bind(reason)
            };
            query.execute(conn).await
        }
        Call::Parked { name } => {
            sqlx::query("SELECT count(*) FROM eventstore.parked($1)")
                .bind(name)
                .execute(conn)
                .await
        }
        Call::Release {
            how,
            name,
            positions,
        } => {
            sqlx::query(&format!("SELECT eventstore.{how}($1, $2)"))
                .bind(name)
                .bind(positions)
                .execute(conn)
                .await
        }
    }
    .map(|_| ())
}

/// When the server started: a crash restarts it.
async fn started_at(conn: &mut PgConnection) -> chrono::DateTime<chrono::Utc> {
    sqlx::query_scalar("SELECT pg_postmaster_start_time()")
        .fetch_one(conn)
        .await
        .expect("the server answers")
}

fn short(call: &Call) -> String {
    let text = format!("{call:?}");
    if text.len() > 300 {
        format!("{}...", &text[..300])
    } else {
        text
    }
}

#[test]
fn generated_hostile_calls_fail_with_documented_sqlstates_and_write_nothing() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let db = runtime.block_on(TestDb::new(2));
    let conn = tokio::sync::Mutex::new(runtime.block_on(db.connect()));
    // Groups for the generated calls to meet, one of them ordered.
    runtime.block_on(async {
        let mut conn = conn.lock().await;
        for sql in [
            "SELECT eventstore.create_group('g1')",
            "SELECT eventstore.create_group('g2', ordered_by_stream => true)",
        ] {
            sqlx::query(sql).execute(&mut *conn).await.unwrap();
        }
    });
    let started = runtime.block_on(async { started_at(&mut *conn.lock().await).await });
    let outcomes = std::sync::Mutex::new(BTreeMap::<String, u32>::new());
    let mut runner = TestRunner::new(Config {
        cases: CALLS,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&call(), |call| {
        runtime.block_on(async {
            let mut conn = conn.lock().await;
            let before = stored_rows(&mut *conn).await;
            let result = run(&mut conn, &call).await;
            let after = stored_rows(&mut *conn).await;
            if started_at(&mut conn).await != started {
                return Err(TestCaseError::fail(format!(
                    "the server restarted after {}",
                    short(&call)
                )));
            }
            let outcome = match &result {
                Ok(()) => "ok".to_owned(),
                Err(error) => {
                    let Some(code) = error.as_database_error().and_then(|e| e.code()) else {
                        return Err(TestCaseError::fail(format!(
                            "{} failed without a SQLSTATE: {error}",
                            short(&call)
                        )));
                    };
                    if !DOCUMENTED.iter().any(|(documented, _)| *documented == code) {
                        return Err(TestCaseError::fail(format!(
                            "{} failed with undocumented {code}: {error}",
                            short(&call)
                        )));
                    }
                    if after != before {
                        return Err(TestCaseError::fail(format!(
                            "{} failed with {code} but wrote: {before:?} -> {after:?}",
                            short(&call)
                        )));
                    }
                    code.into_owned()
                }
            };
            *outcomes.lock().unwrap().entry(outcome).or_default() += 1;
            Ok(())
        })
    });
    let outcomes = outcomes.into_inner().unwrap();
    println!("outcomes of {CALLS} generated calls: {outcomes:?}");
    if let Err(failure) = result {
        panic!("{failure}");
    }
    let total: u32 = outcomes.values().sum();
    assert!(total >= CALLS, "{total} calls made");
    assert!(
        outcomes.get("ok").copied().unwrap_or(0) > 0,
        "some calls succeed"
    );
    assert!(
        outcomes.len() > 3,
        "the calls meet several kinds of refusal"
    );
    drop(conn);
    runtime.block_on(db.drop_database());
}
