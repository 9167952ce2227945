//! In-database tests: each SQL function, and each error with its SQLSTATE.
//!
//! Every test runs inside one transaction that is rolled back afterwards. Events appended in
//! that transaction are therefore never visible to `read_all` or `read_category` here (their
//! transaction has not ended); the global-log behaviour across transactions is covered by the
//! integration tests in `tests/`.

#[pgrx::pg_schema]
mod tests {
    use pgrx::pg_sys;
    use pgrx::prelude::*;
    use pgrx::PgSqlErrorCode;
    use pgrx::PgSqlErrorCode::{
        ERRCODE_FEATURE_NOT_SUPPORTED, ERRCODE_INVALID_PARAMETER_VALUE,
        ERRCODE_T_R_SERIALIZATION_FAILURE, ERRCODE_UNIQUE_VIOLATION,
    };

    /// Runs `sql` in a subtransaction, like a PL/pgSQL `EXCEPTION` block, and returns the SQLSTATE
    /// it failed with, or `None` when it succeeded (its effects are then kept).
    fn sqlstate(sql: &str) -> Option<PgSqlErrorCode> {
        // SAFETY: the subtransaction is begun and ended here, restoring the memory context and
        // resource owner exactly as PL/pgSQL does around an exception block.
        unsafe {
            let context = pg_sys::CurrentMemoryContext;
            let owner = pg_sys::CurrentResourceOwner;
            pg_sys::BeginInternalSubTransaction(std::ptr::null());
            pg_sys::MemoryContextSwitchTo(context);
            let sql = sql.to_owned();
            let failure = PgTryBuilder::new(move || {
                Spi::run(&sql).expect("SPI");
                None
            })
            .catch_others(|caught| match caught {
                pg_sys::panic::CaughtError::PostgresError(report)
                | pg_sys::panic::CaughtError::ErrorReport(report)
                | pg_sys::panic::CaughtError::RustPanic {
                    ereport: report, ..
                } => Some(report.sql_error_code()),
            })
            .execute();
            if failure.is_some() {
                pg_sys::RollbackAndReleaseCurrentSubTransaction();
            } else {
                pg_sys::ReleaseCurrentSubTransaction();
            }
            pg_sys::MemoryContextSwitchTo(context);
            pg_sys::CurrentResourceOwner = owner;
            failure
        }
    }

    fn one_i64(sql: &str) -> i64 {
        Spi::get_one::<i64>(sql).expect("SPI").expect("not NULL")
    }

    fn one_text(sql: &str) -> String {
        Spi::get_one::<String>(sql).expect("SPI").expect("not NULL")
    }

    /// (first_version, last_version, first_position, last_position) of an append.
    fn append(stream: &str, events: &str, expected: &str) -> (i64, i64, i64, i64) {
        let sql = format!(
            "SELECT * FROM eventstore.append({}, {}::jsonb, {expected})",
            pgrx::spi::quote_literal(stream),
            pgrx::spi::quote_literal(events)
        );
        Spi::connect_mut(|client| {
            let row = client.update(&sql, None, &[]).expect("append").first();
            let column = |n: usize| row.get::<i64>(n).expect("int8").expect("not NULL");
            (column(1), column(2), column(3), column(4))
        })
    }

    fn count_events() -> i64 {
        one_i64("SELECT count(*) FROM eventstore.events")
    }

    const ONE: &str = r#"[{"type": "user-created", "data": {"username": "alice"}}]"#;

    // ---- append ------------------------------------------------------------------------------

    #[pg_test]
    fn append_starts_a_stream_at_version_zero() {
        let (first, last, first_pos, last_pos) = append("user-alice", ONE, "NULL");
        assert_eq!((first, last), (0, 0));
        assert_eq!(first_pos, last_pos);
        assert!(first_pos > 0);
        assert_eq!(one_i64("SELECT eventstore.stream_version('user-alice')"), 0);
    }

    #[pg_test]
    fn append_of_several_events_gets_consecutive_versions_and_positions() {
        append("order-1", ONE, "NULL");
        let events = r#"[{"type": "a", "data": 1}, {"type": "b", "data": [2]}, {"type": "c", "data": null}]"#;
        let (first, last, first_pos, last_pos) = append("order-1", events, "0");
        assert_eq!((first, last), (1, 3));
        assert_eq!(last_pos - first_pos, 2);
        assert_eq!(
            one_text("SELECT string_agg(type || ':' || data::text, ',' ORDER BY version) FROM eventstore.events WHERE stream = 'order-1' AND version > 0"),
            "a:1,b:[2],c:null"
        );
    }

    #[pg_test]
    fn appends_in_one_transaction_continue_its_positions() {
        let (_, _, _, last_a) = append("a-1", ONE, "NULL");
        let (_, _, first_b, _) = append("b-1", ONE, "NULL");
        assert_eq!(first_b, last_a + 1);
    }

    #[pg_test]
    fn positions_used_by_a_rolled_back_savepoint_are_not_reused() {
        let (_, _, before, _) = append("a-1", ONE, "NULL");
        assert_eq!(
            sqlstate(r#"SELECT eventstore.append('a-1', '[{"type": "x", "data": {}}]', 5)"#),
            Some(ERRCODE_T_R_SERIALIZATION_FAILURE)
        );
        assert_eq!(
            sqlstate(
                r#"SELECT eventstore.append('a-2', '[{"type": "x", "data": {}}]'); SELECT 1/0"#
            ),
            Some(PgSqlErrorCode::ERRCODE_DIVISION_BY_ZERO)
        );
        let (_, _, after, _) = append("a-3", ONE, "NULL");
        assert_eq!(
            after,
            before + 2,
            "the rolled-back event's position stays a gap"
        );
        assert_eq!(one_i64("SELECT eventstore.stream_version('a-2')"), -1);
    }

    #[pg_test]
    fn missing_id_gets_a_fresh_uuid_and_missing_metadata_an_empty_object() {
        append(
            "user-bob",
            r#"[{"type": "t", "data": {}}, {"type": "t", "data": {}, "metadata": null, "id": null}]"#,
            "NULL",
        );
        assert_eq!(
            one_i64("SELECT count(DISTINCT id) FROM eventstore.events WHERE stream = 'user-bob'"),
            2
        );
        assert_eq!(one_i64("SELECT count(*) FROM eventstore.events WHERE stream = 'user-bob' AND metadata = '{}'"), 2);
    }

    #[pg_test]
    fn supplied_id_and_metadata_are_stored() {
        append(
            "user-carol",
            r#"[{"type": "t", "data": {"k": "v"}, "metadata": {"correlationId": "c-1"}, "id": "6f1c2b5e-2f4b-4c8e-9a57-2a4f0e8d1c11"}]"#,
            "NULL",
        );
        assert_eq!(
            one_text("SELECT id::text || ' ' || (metadata->>'correlationId') || ' ' || data::text FROM eventstore.events WHERE stream = 'user-carol'"),
            r#"6f1c2b5e-2f4b-4c8e-9a57-2a4f0e8d1c11 c-1 {"k": "v"}"#
        );
    }

    #[pg_test]
    fn expected_version_helpers() {
        assert_eq!(
            Spi::get_one::<i64>("SELECT eventstore.any_version()").unwrap(),
            None
        );
        assert_eq!(one_i64("SELECT eventstore.no_stream()"), -1);
        assert_eq!(one_i64("SELECT eventstore.stream_exists()"), -2);
    }

    #[pg_test]
    fn expected_no_stream() {
        append("s-1", ONE, "eventstore.no_stream()");
        assert_eq!(
            sqlstate(&format!(
                "SELECT eventstore.append('s-1', '{ONE}', eventstore.no_stream())"
            )),
            Some(ERRCODE_T_R_SERIALIZATION_FAILURE)
        );
        assert_eq!(count_events(), 1);
    }

    #[pg_test]
    fn expected_stream_exists() {
        assert_eq!(
            sqlstate(&format!(
                "SELECT eventstore.append('s-1', '{ONE}', eventstore.stream_exists())"
            )),
            Some(ERRCODE_T_R_SERIALIZATION_FAILURE)
        );
        assert_eq!(count_events(), 0);
        append("s-1", ONE, "NULL");
        assert_eq!(append("s-1", ONE, "eventstore.stream_exists()").0, 1);
    }

    #[pg_test]
    fn expected_exact_version() {
        append("s-1", ONE, "NULL");
        append("s-1", ONE, "0");
        assert_eq!(append("s-1", ONE, "1").0, 2);
        for wrong in ["0", "1", "3", "100"] {
            assert_eq!(
                sqlstate(&format!(
                    "SELECT eventstore.append('s-1', '{ONE}', {wrong})"
                )),
                Some(ERRCODE_T_R_SERIALIZATION_FAILURE),
                "expected {wrong}"
            );
        }
        assert_eq!(
            sqlstate(&format!("SELECT eventstore.append('s-2', '{ONE}', 0)")),
            Some(ERRCODE_T_R_SERIALIZATION_FAILURE)
        );
        assert_eq!(count_events(), 3);
    }

    #[pg_test(error = "wrong expected version for stream \"s-1\": expected 7, actual 0")]
    fn wrong_expected_version_message_names_stream_expected_and_actual() {
        append("s-1", ONE, "NULL");
        append("s-1", ONE, "7");
    }

    #[pg_test]
    fn try_append_reports_a_wrong_version_as_data_and_writes_nothing() {
        let attempt = |expected: &str| {
            Spi::get_one::<String>(&format!(
                "SELECT row(a.*)::text FROM eventstore.try_append('s-1', '{ONE}', {expected}) a"
            ))
            .unwrap()
            .unwrap()
        };
        assert_eq!(attempt("0"), "(,,,,-1)");
        assert_eq!(attempt("-2"), "(,,,,-1)");
        assert_eq!(count_events(), 0);
        let first = attempt("-1");
        assert!(
            first.starts_with("(0,0,") && first.ends_with(",0)"),
            "{first}"
        );
        assert_eq!(attempt("-1"), "(,,,,0)");
        assert_eq!(attempt("5"), "(,,,,0)");
        assert!(attempt("0").starts_with("(1,1,"));
        assert_eq!(count_events(), 2);
        // Everything but the version check still raises.
        assert_eq!(
            sqlstate("SELECT eventstore.try_append('s-1', '[{}]')"),
            Some(ERRCODE_INVALID_PARAMETER_VALUE)
        );
        assert_eq!(
            sqlstate(&format!("SELECT eventstore.try_append('s-1', '{ONE}', -7)")),
            Some(ERRCODE_INVALID_PARAMETER_VALUE)
        );
    }

    #[pg_test]
    fn a_failed_append_writes_nothing() {
        append("s-1", ONE, "NULL");
        let batch =
            r#"[{"type": "ok", "data": {}}, {"type": "ok", "data": {}}, {"type": "", "data": {}}]"#;
        assert_eq!(
            sqlstate(&format!("SELECT eventstore.append('s-1', '{batch}')")),
            Some(ERRCODE_INVALID_PARAMETER_VALUE)
        );
        assert_eq!(count_events(), 1);
    }

    #[pg_test]
    fn retry_with_the_same_ids_returns_the_first_result_without_writing() {
        let events = r#"[{"type": "a", "data": {}, "id": "11111111-1111-4111-8111-111111111111"}, {"type": "b", "data": {}, "id": "22222222-2222-4222-8222-222222222222"}]"#;
        let first = append("order-7", events, "-1");
        assert_eq!(
            append("order-7", events, "-1"),
            first,
            "retry with the same expectation"
        );
        assert_eq!(
            append("order-7", events, "NULL"),
            first,
            "retry with any version"
        );
        append("order-7", ONE, "1");
        assert_eq!(
            append("order-7", events, "-1"),
            first,
            "retry after the stream moved on"
        );
        assert_eq!(count_events(), 3);
    }

    #[pg_test]
    fn reusing_an_id_elsewhere_is_a_unique_violation() {
        let id = "33333333-3333-4333-8333-333333333333";
        append(
            "order-8",
            &format!(r#"[{{"type": "a", "data": {{}}, "id": "{id}"}}]"#),
            "NULL",
        );
        for (stream, expected, events) in [
            (
                "order-9",
                "NULL",
                format!(r#"[{{"type": "a", "data": {{}}, "id": "{id}"}}]"#),
            ),
            (
                "order-9",
                "-1",
                format!(r#"[{{"type": "a", "data": {{}}, "id": "{id}"}}]"#),
            ),
            (
                "order-8",
                "NULL",
                format!(
                    r#"[{{"type": "new", "data": {{}}}}, {{"type": "a", "data": {{}}, "id": "{id}"}}]"#
                ),
            ),
            (
                "order-8",
                "0",
                format!(r#"[{{"type": "a", "data": {{}}, "id": "{id}"}}]"#),
            ),
        ] {
            assert_eq!(
                sqlstate(&format!(
                    "SELECT eventstore.append('{stream}', '{events}', {expected})"
                )),
                Some(ERRCODE_UNIQUE_VIOLATION),
                "{stream} {expected} {events}"
            );
        }
        assert_eq!(count_events(), 1);
    }

    #[pg_test(
        error = "event id 33333333-3333-4333-8333-333333333333 is already used by stream \"order-8\" at version 0"
    )]
    fn duplicate_id_message_names_the_id() {
        let events = r#"[{"type": "a", "data": {}, "id": "33333333-3333-4333-8333-333333333333"}]"#;
        append("order-8", events, "NULL");
        append("order-9", events, "NULL");
    }

    #[pg_test]
    fn malformed_events_are_refused_with_22023() {
        let cases = [
            ("NULL", "NULL events"),
            ("'{}'", "an object"),
            ("'\"text\"'", "a scalar"),
            ("'[]'", "an empty array"),
            ("'[1]'", "a number as event"),
            ("'[[]]'", "an array as event"),
            (r#"'[{"data": {}}]'"#, "no type"),
            (r#"'[{"type": 5, "data": {}}]'"#, "numeric type"),
            (r#"'[{"type": null, "data": {}}]'"#, "null type"),
            (r#"'[{"type": "", "data": {}}]'"#, "empty type"),
            (r#"'[{"type": "t"}]'"#, "no data"),
            (
                r#"'[{"type": "t", "data": {}, "metadata": [1]}]'"#,
                "array metadata",
            ),
            (
                r#"'[{"type": "t", "data": {}, "metadata": "m"}]'"#,
                "string metadata",
            ),
            (
                r#"'[{"type": "t", "data": {}, "id": "not-a-uuid"}]'"#,
                "malformed id",
            ),
            (r#"'[{"type": "t", "data": {}, "id": 42}]'"#, "numeric id"),
            (
                r#"'[{"type": "t", "data": {}, "typo": 1}]'"#,
                "unknown field",
            ),
            (
                r#"'[{"type": "t", "data": {}}, {"type": "t"}]'"#,
                "second event bad",
            ),
            (
                r#"'[{"type": "t", "data": {}, "id": "44444444-4444-4444-8444-444444444444"}, {"type": "t", "data": {}, "id": "44444444-4444-4444-8444-444444444444"}]'"#,
                "the same id twice",
            ),
        ];
        for (events, case) in cases {
            assert_eq!(
                sqlstate(&format!("SELECT eventstore.append('s-1', {events})")),
                Some(ERRCODE_INVALID_PARAMETER_VALUE),
                "{case}"
            );
        }
        let long_type = "t".repeat(1025);
        assert_eq!(
            sqlstate(&format!(
                r#"SELECT eventstore.append('s-1', '[{{"type": "{long_type}", "data": {{}}}}]')"#
            )),
            Some(ERRCODE_INVALID_PARAMETER_VALUE),
            "oversized type"
        );
        assert_eq!(count_events(), 0);
    }

    #[pg_test(error = "events[1].type is missing")]
    fn malformed_event_message_names_event_and_field() {
        append(
            "s-1",
            r#"[{"type": "t", "data": {}}, {"data": {}}]"#,
            "NULL",
        );
    }

    #[pg_test]
    fn bad_stream_and_expected_version_are_refused_with_22023() {
        let long = "s".repeat(1025);
        for call in [
            format!("SELECT eventstore.append(NULL, '{ONE}')"),
            format!("SELECT eventstore.append('', '{ONE}')"),
            format!("SELECT eventstore.append('{long}', '{ONE}')"),
            format!("SELECT eventstore.append('s-1', '{ONE}', -3)"),
        ] {
            assert_eq!(
                sqlstate(&call),
                Some(ERRCODE_INVALID_PARAMETER_VALUE),
                "{}",
                &call[..60.min(call.len())]
            );
        }
        let longest = "s".repeat(1024);
        assert_eq!(append(&longest, ONE, "NULL").0, 0);
    }

    #[pg_test]
    fn stored_events_are_immutable() {
        append("s-1", ONE, "NULL");
        for statement in [
            "UPDATE eventstore.events SET type = 'changed'",
            "DELETE FROM eventstore.events",
            "TRUNCATE eventstore.events",
        ] {
            assert_eq!(
                sqlstate(statement),
                Some(ERRCODE_FEATURE_NOT_SUPPORTED),
                "{statement}"
            );
        }
        assert_eq!(
            one_text("SELECT type FROM eventstore.events"),
            "user-created"
        );
    }

    #[pg_test]
    fn row_triggers_on_the_event_log_fire_for_every_appended_event() {
        Spi::run(
            "CREATE TABLE seen (stream text, version bigint);
             CREATE FUNCTION remember() RETURNS trigger LANGUAGE plpgsql AS
                 $$ BEGIN INSERT INTO seen VALUES (NEW.stream, NEW.version); RETURN NEW; END $$;
             CREATE TRIGGER remember AFTER INSERT ON eventstore.events
                 FOR EACH ROW EXECUTE FUNCTION remember();",
        )
        .unwrap();
        five_events("order-1");
        assert_eq!(
            one_text("SELECT string_agg(version::text, ',' ORDER BY version) FROM seen"),
            "0,1,2,3,4"
        );
    }

    #[pg_test]
    fn statement_triggers_on_the_event_log_fire_through_the_full_executor() {
        Spi::run(
            "CREATE TABLE statements (n int);
             CREATE FUNCTION count_statement() RETURNS trigger LANGUAGE plpgsql AS
                 $$ BEGIN INSERT INTO statements VALUES (1); RETURN NULL; END $$;
             CREATE TRIGGER count_statement AFTER INSERT ON eventstore.events
                 FOR EACH STATEMENT EXECUTE FUNCTION count_statement();",
        )
        .unwrap();
        five_events("order-1");
        let (first, last, position, _) = append("order-1", ONE, "4");
        assert_eq!((first, last), (5, 5));
        assert_eq!(position, position_of("order-1", 5));
        assert_eq!(one_i64("SELECT count(*) FROM statements"), 2);
        assert_eq!(versions("eventstore.read_stream('order-1')"), "0,1,2,3,4,5");
    }

    fn position_of(stream: &str, version: i64) -> i64 {
        one_i64(&format!("SELECT position FROM eventstore.events WHERE stream = '{stream}' AND version = {version}"))
    }

    #[pg_test]
    fn events_loaded_from_a_busier_cluster_lift_the_positions_of_new_appends_above_them() {
        // An event as pg_restore or COPY brings it from a cluster whose transaction ids are a
        // million ahead of this one's.
        let far = (one_i64("SELECT pg_current_xact_id()::text::bigint") + 1_000_000) << 20;
        Spi::run(&format!(
            "INSERT INTO eventstore.events (position, stream, version, type, data, metadata, id) \
             VALUES ({far}, 'order-1', 0, 'order-placed', '{{}}', '{{}}', gen_random_uuid())"
        ))
        .unwrap();
        assert!(one_i64("SELECT base FROM eventstore.position_base") > 0);
        let (version, _, restored_stream, _) = append("order-1", ONE, "0");
        assert_eq!(version, 1);
        assert!(restored_stream > far, "{restored_stream} is above {far}");
        let (_, _, new_stream, _) = append("order-2", ONE, "-1");
        assert!(new_stream > restored_stream);
        // Events loaded below what the cluster hands out leave the base as it is.
        let base = one_i64("SELECT base FROM eventstore.position_base");
        Spi::run(
            "INSERT INTO eventstore.events (position, stream, version, type, data, metadata, id) \
             VALUES (1 << 20, 'order-3', 0, 'order-placed', '{}', '{}', gen_random_uuid())",
        )
        .unwrap();
        assert_eq!(one_i64("SELECT base FROM eventstore.position_base"), base);
    }

    #[pg_test]
    fn events_loaded_from_a_younger_cluster_keep_the_base() {
        Spi::run(
            "INSERT INTO eventstore.events (position, stream, version, type, data, metadata, id) \
             VALUES (1 << 20, 'order-1', 0, 'order-placed', '{}', '{}', gen_random_uuid())",
        )
        .unwrap();
        assert_eq!(one_i64("SELECT base FROM eventstore.position_base"), 0);
        let (_, _, position, _) = append("order-1", ONE, "0");
        assert!(position > 1 << 20);
    }

    #[pg_test]
    fn appending_needs_the_writer_role_not_a_table_privilege() {
        Spi::run("CREATE ROLE es_test_app; SET LOCAL ROLE es_test_app").unwrap();
        let append_one = format!("SELECT eventstore.append('s-1', '{ONE}')");
        assert_eq!(
            sqlstate(&append_one),
            Some(PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE)
        );
        Spi::run("RESET ROLE; GRANT eventstore_reader TO es_test_app; SET LOCAL ROLE es_test_app")
            .unwrap();
        assert_eq!(
            sqlstate(&append_one),
            Some(PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE)
        );
        assert_eq!(sqlstate("SELECT * FROM eventstore.read_all()"), None);
        Spi::run("RESET ROLE").unwrap();
        assert_eq!(count_events(), 0);
        Spi::run("GRANT eventstore_writer TO es_test_app; SET LOCAL ROLE es_test_app").unwrap();
        assert_eq!(sqlstate(&append_one), None);
        Spi::run("RESET ROLE").unwrap();
        assert_eq!(count_events(), 1);
    }

    // ---- read_stream and stream_version ----------------------------------------------------

    fn versions(sql: &str) -> String {
        Spi::get_one::<String>(&format!(
            "SELECT string_agg(version::text, ',' ORDER BY ordinality) FROM {sql} WITH ORDINALITY"
        ))
        .expect("SPI")
        .unwrap_or_default()
    }

    fn five_events(stream: &str) {
        let events = r#"[{"type": "e", "data": 0}, {"type": "e", "data": 1}, {"type": "e", "data": 2}, {"type": "e", "data": 3}, {"type": "e", "data": 4}]"#;
        append(stream, events, "NULL");
    }

    #[pg_test]
    fn read_stream_forwards_from_a_version_with_a_count() {
        five_events("s-1");
        five_events("s-2");
        assert_eq!(versions("eventstore.read_stream('s-1')"), "0,1,2,3,4");
        assert_eq!(versions("eventstore.read_stream('s-1', 2)"), "2,3,4");
        assert_eq!(versions("eventstore.read_stream('s-1', 1, 2)"), "1,2");
        assert_eq!(versions("eventstore.read_stream('s-1', 9)"), "");
        assert_eq!(versions("eventstore.read_stream('s-1', 0, 0)"), "");
        assert_eq!(versions("eventstore.read_stream('nobody')"), "");
        assert_eq!(
            one_text("SELECT string_agg(data::text, ',') FROM eventstore.read_stream('s-2')"),
            "0,1,2,3,4"
        );
    }

    #[pg_test]
    fn read_stream_backwards() {
        five_events("s-1");
        assert_eq!(
            versions("eventstore.read_stream('s-1', -1, 1000, true)"),
            "4,3,2,1,0"
        );
        assert_eq!(
            versions("eventstore.read_stream('s-1', -1, 2, true)"),
            "4,3"
        );
        assert_eq!(
            versions("eventstore.read_stream('s-1', 2, 1000, true)"),
            "2,1,0"
        );
        assert_eq!(
            versions("eventstore.read_stream('s-1', backwards => true)"),
            "0"
        );
    }

    #[pg_test]
    fn read_stream_returns_every_column() {
        append(
            "user-dan",
            r#"[{"type": "user-created", "data": {"username": "dan"}, "metadata": {"m": 1}, "id": "55555555-5555-4555-8555-555555555555"}]"#,
            "NULL",
        );
        assert_eq!(
            one_text("SELECT format('%s|%s|%s|%s|%s|%s|%s', stream, version, type, data, metadata, id, recorded_at IS NOT NULL AND position > 0) FROM eventstore.read_stream('user-dan')"),
            r#"user-dan|0|user-created|{"username": "dan"}|{"m": 1}|55555555-5555-4555-8555-555555555555|t"#
        );
    }

    #[pg_test]
    fn read_stream_arguments_are_checked() {
        for call in [
            "eventstore.read_stream(NULL)",
            "eventstore.read_stream('')",
            "eventstore.read_stream('s-1', -1)",
            "eventstore.read_stream('s-1', NULL)",
            "eventstore.read_stream('s-1', -2, 10, true)",
            "eventstore.read_stream('s-1', 0, -1)",
            "eventstore.read_stream('s-1', 0, 100001)",
            "eventstore.read_stream('s-1', 0, NULL)",
            "eventstore.read_stream('s-1', 0, 10, NULL)",
        ] {
            assert_eq!(
                sqlstate(&format!("SELECT * FROM {call}")),
                Some(ERRCODE_INVALID_PARAMETER_VALUE),
                "{call}"
            );
        }
    }

    #[pg_test]
    fn stream_version_of_absent_and_present_streams() {
        assert_eq!(one_i64("SELECT eventstore.stream_version('order-1')"), -1);
        five_events("order-1");
        assert_eq!(one_i64("SELECT eventstore.stream_version('order-1')"), 4);
        assert_eq!(
            sqlstate("SELECT eventstore.stream_version(NULL)"),
            Some(ERRCODE_INVALID_PARAMETER_VALUE)
        );
    }

    // ---- read_all and read_category ---------------------------------------------------------

    #[pg_test]
    fn the_global_log_hides_events_of_transactions_still_running() {
        five_events("order-1");
        assert_eq!(one_i64("SELECT count(*) FROM eventstore.events"), 5);
        assert_eq!(one_i64("SELECT count(*) FROM eventstore.read_all()"), 0);
        assert_eq!(
            one_i64("SELECT count(*) FROM eventstore.read_category('order')"),
            0
        );
        assert!(
            one_i64("SELECT eventstore._visible_below()")
                <= one_i64("SELECT min(position) FROM eventstore.events")
        );
    }

    #[pg_test]
    fn without_preloading_each_appending_transaction_notifies_itself() {
        // pgrx's test cluster does not preload the library.
        assert_eq!(
            one_text("SELECT eventstore.wakeup_mode()"),
            "per_transaction"
        );
        assert_eq!(
            sqlstate(&format!("SELECT eventstore.append('s-1', '{ONE}')")),
            None
        );
    }

    #[pg_test]
    fn head_position_counts_only_what_read_all_can_return() {
        assert_eq!(one_i64("SELECT eventstore.head_position()"), 0);
        five_events("order-1");
        // This transaction is still running, so its events are not readable yet.
        assert_eq!(one_i64("SELECT eventstore.head_position()"), 0);
    }

    #[pg_test]
    fn read_all_and_read_category_arguments_are_checked() {
        for call in [
            "eventstore.read_all(-1)",
            "eventstore.read_all(NULL)",
            "eventstore.read_all(0, -5)",
            "eventstore.read_all(0, 1000000)",
            "eventstore.read_all(0, NULL)",
            "eventstore.read_category(NULL)",
            "eventstore.read_category('')",
            "eventstore.read_category('order-1')",
            "eventstore.read_category('order', -1)",
            "eventstore.read_category('order', 0, -1)",
            "eventstore.read_category('order', 0, 10, 0, NULL)",
            "eventstore.read_category('order', 0, 10, NULL, 2)",
            "eventstore.read_category('order', 0, 10, 2, 2)",
            "eventstore.read_category('order', 0, 10, -1, 2)",
            "eventstore.read_category('order', 0, 10, 0, 0)",
        ] {
            assert_eq!(
                sqlstate(&format!("SELECT * FROM {call}")),
                Some(ERRCODE_INVALID_PARAMETER_VALUE),
                "{call}"
            );
        }
        for call in [
            "eventstore.read_all()",
            "eventstore.read_all(0, 0)",
            "eventstore.read_all(0, 100000, ARRAY['a'], ARRAY['b'])",
            "eventstore.read_category('order', 0, 10, 1, 2)",
        ] {
            assert_eq!(sqlstate(&format!("SELECT * FROM {call}")), None, "{call}");
        }
    }

    #[pg_test]
    fn category_is_the_text_before_the_first_dash() {
        assert_eq!(one_text("SELECT eventstore.category('order-42')"), "order");
        assert_eq!(
            one_text("SELECT eventstore.category('order-42-b')"),
            "order"
        );
        assert_eq!(one_text("SELECT eventstore.category('order')"), "order");
    }

    #[pg_test]
    fn every_function_is_documented() {
        assert_eq!(
            one_i64(
                "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
                 WHERE n.nspname = 'eventstore' AND obj_description(p.oid, 'pg_proc') IS NULL"
            ),
            0
        );
        assert!(one_i64("SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'eventstore'") >= 17);
    }
}
