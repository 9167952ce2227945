//! Refinery migrations run over a sqlx connection: the store's own set
//! (`migrations/eventstore`: the extension and the projection checkpoints), and any other set
//! an application embeds with `refinery::embed_migrations!` (the shop's read models, say),
//! each with a history table of its own.
//!
//! refinery has no sqlx driver, so [`MigrationConnection`] implements its async traits on a
//! sqlx `PgConnection`: each migration runs in its own transaction, together with its row in
//! the history table.

use refinery_core::traits::r#async::{AsyncMigrate, AsyncQuery, AsyncTransaction};
use refinery_core::Migration;
use sqlx::{Connection, Executor, PgConnection, Row};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::{Error, Result};

refinery::embed_migrations!("../migrations/eventstore");

/// The store's history table, named apart from refinery's default so an application's own
/// refinery migrations in the same database keep theirs.
pub const HISTORY_TABLE: &str = "eventstore_schema_history";

/// Key of the advisory lock that makes concurrent migration runs (of any set) take turns.
const MIGRATION_LOCK: i64 = 0x4553_4d49_4752_4154; // "ESMIGRAT"

/// Migrations of earlier releases' store sets that are no longer in it; their rows are
/// dropped from the history before the store's set runs, since refinery refuses a history
/// naming a migration it does not have:
/// - V2 `shop_read_models` (releases 0.1.0 and 0.2.0) also created the shop's read models:
///   those moved to the shop crate's own set (whose V1 adopts the existing tables), the
///   checkpoint table to V4 here.
/// - V3 `pg_eventstore_0_2_0` (release 0.2.0) and V5 `pg_eventstore_0_3_0` (release 0.3.0)
///   ran `ALTER EXTENSION pg_eventstore UPDATE TO` their version, which fails once V1 installs
///   a newer one; V6 updates to the installed version instead, through every step between.
const MOVED_MIGRATIONS: [(i32, &str); 3] = [
    (2, "shop_read_models"),
    (3, "pg_eventstore_0_2_0"),
    (5, "pg_eventstore_0_3_0"),
];

/// The store's own migrations as they run where the extension is installed.
fn extension_runner() -> refinery::Runner {
    migrations::runner()
}

/// The store's own migrations as they run on a portable database: the same versions and
/// names, the extension's steps replaced by the portable install ([`crate::portable`]).
/// Their checksums differ from the extension's, so refinery refuses to run one set on a
/// database the other set installed.
fn portable_runner() -> Result<refinery::Runner> {
    Ok(refinery::Runner::new(&portable_migrations()?))
}

/// The migrations of [`portable_runner`].
pub(crate) fn portable_migrations() -> Result<Vec<Migration>> {
    let mut portable = Vec::new();
    for migration in extension_runner().get_migrations() {
        let sql =
            crate::portable::migration_sql(migration.version(), migration.sql().unwrap_or(""))?;
        let name = format!("V{}__{}", migration.version(), migration.name());
        portable.push(Migration::unapplied(&name, &sql).map_err(Error::Migration)?);
    }
    Ok(portable)
}

/// Which form of the store [`crate::EventStore::migrate_with`] installs in a database that
/// has neither yet. A database that has one keeps it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Install {
    /// The extension when the server offers it (`pg_available_extensions`), the portable
    /// form otherwise.
    #[default]
    Auto,
    /// The portable form, even where the extension is available.
    Portable,
}

/// The form of the store in a database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    /// The `pg_eventstore` extension (a C library; needs a superuser to install).
    Extension,
    /// Schema `eventstore` in plain SQL and PL/pgSQL, installed by the database's owner.
    Portable,
}

/// The form of the store in the connected database, if it has one.
pub(crate) async fn installed_form(connection: &mut PgConnection) -> Result<Option<Form>> {
    let (extension, schema): (bool, bool) = sqlx::query_as(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'pg_eventstore'), \
                pg_catalog.to_regnamespace('eventstore') IS NOT NULL",
    )
    .fetch_one(&mut *connection)
    .await?;
    Ok(match (extension, schema) {
        (true, _) => Some(Form::Extension),
        (false, true) => Some(Form::Portable),
        (false, false) => None,
    })
}

/// The form the store's migrations install or keep, and why.
async fn choose_form(connection: &mut PgConnection, install: Install) -> Result<Form> {
    let installed = installed_form(connection).await?;
    match (installed, install) {
        (Some(Form::Extension), Install::Portable) => Err(Error::InvalidArgument(
            "the database has the pg_eventstore extension; the portable form installs only \
             where the store is not installed yet"
                .to_owned(),
        )),
        (Some(form), _) => Ok(form),
        (None, Install::Portable) => Ok(Form::Portable),
        (None, Install::Auto) => {
            let available: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT FROM pg_catalog.pg_available_extensions \
                                WHERE name = 'pg_eventstore')",
            )
            .fetch_one(&mut *connection)
            .await?;
            Ok(if available {
                Form::Extension
            } else {
                Form::Portable
            })
        }
    }
}

/// A migration applied by [`crate::EventStore::migrate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedMigration {
    /// The `V{n}` number of the file.
    pub version: i32,
    /// The name after `V{n}__`.
    pub name: String,
}

struct MigrationConnection<'c>(&'c mut PgConnection);

impl AsyncTransaction for MigrationConnection<'_> {
    type Error = sqlx::Error;

    async fn execute<'a, T: Iterator<Item = &'a str> + Send + 'a>(
        &'a mut self,
        queries: T,
    ) -> Result<usize, Self::Error> {
        let queries: Vec<String> = queries.map(str::to_owned).collect();
        apply(self.0, queries).await
    }
}

/// Runs `queries` in one transaction. A boxed future of its own: written inline in the trait
/// method, the compiler cannot prove the future `Send` for every lifetime.
fn apply(
    connection: &mut PgConnection,
    queries: Vec<String>,
) -> futures_util::future::BoxFuture<'_, Result<usize, sqlx::Error>> {
    Box::pin(async move {
        let mut transaction = Connection::begin(connection).await?;
        for query in &queries {
            // No arguments: the simple query protocol, which takes several statements.
            Executor::execute(&mut *transaction, query.as_str()).await?;
        }
        transaction.commit().await?;
        Ok(queries.len())
    })
}

impl AsyncQuery<Vec<Migration>> for MigrationConnection<'_> {
    async fn query<'a>(&'a mut self, query: &'a str) -> Result<Vec<Migration>, Self::Error> {
        let rows = Executor::fetch_all(&mut *self.0, query).await?;
        rows.iter()
            .map(|row| {
                let applied_on: String = row.try_get(2)?;
                let applied_on = OffsetDateTime::parse(&applied_on, &Rfc3339)
                    .map_err(|e| sqlx::Error::Decode(e.into()))?;
                let checksum: String = row.try_get(3)?;
                let checksum = checksum
                    .parse::<u64>()
                    .map_err(|e| sqlx::Error::Decode(e.into()))?;
                Ok(Migration::applied(
                    row.try_get(0)?,
                    row.try_get(1)?,
                    applied_on,
                    checksum,
                ))
            })
            .collect()
    }
}

impl AsyncMigrate for MigrationConnection<'_> {}

/// Whether `name` can be a history table: refinery writes it into its SQL unquoted.
fn check_table_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let plain = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 63;
    if plain {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "migration history table {name:?} must be a lower-case SQL identifier"
        )))
    }
}

/// A set of migrations to apply.
pub(crate) enum MigrationSet<'a> {
    /// The store's own, in the form the database has or `Install` chooses.
    Store(Install),
    /// An application's, recorded in a history table of its own.
    Other(refinery::Runner, &'a str),
}

/// Applies the migrations of `set` not yet recorded in its history table, one transaction
/// each, holding an advisory lock so concurrent callers take turns.
pub(crate) async fn run(
    connection: &mut PgConnection,
    set: MigrationSet<'_>,
) -> Result<Vec<AppliedMigration>> {
    if let MigrationSet::Other(_, history_table) = &set {
        check_table_name(history_table)?;
    }
    let report = with_migration_lock(connection, async |connection| match set {
        MigrationSet::Store(install) => run_store(connection, install).await,
        MigrationSet::Other(runner, history_table) => {
            run_locked(connection, runner, history_table).await
        }
    })
    .await?;
    Ok(report
        .applied_migrations()
        .iter()
        .map(|m| AppliedMigration {
            version: m.version(),
            name: m.name().to_owned(),
        })
        .collect())
}

/// Runs `work` holding the migration lock (a session advisory lock), so that concurrent
/// callers take turns; the lock is released whether `work` succeeds or fails.
async fn with_migration_lock<T>(
    connection: &mut PgConnection,
    work: impl AsyncFnOnce(&mut PgConnection) -> Result<T>,
) -> Result<T> {
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *connection)
        .await?;
    let outcome = work(&mut *connection).await;
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *connection)
        .await;
    let outcome = outcome?;
    unlocked?;
    Ok(outcome)
}

/// The store's set, under the migration lock.
async fn run_store(connection: &mut PgConnection, install: Install) -> Result<refinery::Report> {
    let runner = match choose_form(connection, install).await? {
        Form::Extension => extension_runner(),
        Form::Portable => portable_runner()?,
    };
    run_locked(connection, runner, HISTORY_TABLE).await
}

async fn run_locked(
    connection: &mut PgConnection,
    runner: refinery::Runner,
    history_table: &str,
) -> Result<refinery::Report> {
    if history_table == HISTORY_TABLE {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(HISTORY_TABLE)
            .fetch_one(&mut *connection)
            .await?;
        if exists {
            for (version, name) in MOVED_MIGRATIONS {
                let removed = sqlx::query(&format!(
                    "DELETE FROM {HISTORY_TABLE} WHERE version = $1 AND name = $2"
                ))
                .bind(version)
                .bind(name)
                .execute(&mut *connection)
                .await?;
                if removed.rows_affected() > 0 {
                    tracing::info!(
                        "{HISTORY_TABLE}: V{version}__{name} of an earlier release is superseded"
                    );
                }
            }
        }
    }
    let mut runner = runner;
    runner
        .set_migration_table_name(history_table)
        .run_async(&mut MigrationConnection(&mut *connection))
        .await
        .map_err(Error::Migration)
}

/// The store's tables, in the order their rows are copied when a portable database moves to
/// the extension.
const STORE_TABLES: [&str; 5] = [
    "position_base",
    "subscription_groups",
    "group_events",
    "group_leases",
    "events",
];

/// What [`switch_to_extension`] moved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Switched {
    /// Events moved, at the positions they had.
    pub events: i64,
    /// Subscription groups moved, with their positions, leases, retries and parked events.
    pub groups: i64,
}

/// Moves a portable database to the extension in one transaction, under the migration lock:
/// the portable schema is renamed aside, `CREATE EXTENSION pg_eventstore` installs the same
/// release, every row of the store's tables is copied at the same positions (the position
/// base too), the group ids' sequence is carried over, the old schema is dropped, and the
/// store's history rows get the extension's checksums. Projection checkpoints live in schema
/// `projections` and stay as they are. Needs a role that may create the extension.
pub(crate) async fn switch_to_extension(connection: &mut PgConnection) -> Result<Switched> {
    with_migration_lock(connection, switch_locked).await
}

async fn switch_locked(connection: &mut PgConnection) -> Result<Switched> {
    match installed_form(connection).await? {
        Some(Form::Portable) => {}
        Some(Form::Extension) => {
            return Err(Error::InvalidArgument(
                "the database has the pg_eventstore extension already".to_owned(),
            ))
        }
        None => {
            return Err(Error::InvalidArgument(
                "the database has no store to move; eventstore migrate installs one".to_owned(),
            ))
        }
    }
    let version = crate::portable::VERSION;
    let available: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_available_extension_versions \
                        WHERE name = 'pg_eventstore' AND version = $1)",
    )
    .bind(version)
    .fetch_one(&mut *connection)
    .await?;
    if !available {
        return Err(Error::InvalidArgument(format!(
            "this server does not offer pg_eventstore {version} (pg_available_extension_versions); \
             install the extension first"
        )));
    }
    // Views of the application's on the store's tables would be dropped with the old schema.
    let dependents: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT v.oid::regclass::text FROM pg_catalog.pg_depend AS d \
         JOIN pg_catalog.pg_rewrite AS r ON d.classid = 'pg_catalog.pg_rewrite'::regclass \
                                         AND d.objid = r.oid \
         JOIN pg_catalog.pg_class AS v ON v.oid = r.ev_class \
         JOIN pg_catalog.pg_class AS t ON d.refclassid = 'pg_catalog.pg_class'::regclass \
                                        AND d.refobjid = t.oid \
         WHERE t.relnamespace = 'eventstore'::regnamespace \
           AND v.relnamespace <> 'eventstore'::regnamespace \
         ORDER BY 1",
    )
    .fetch_all(&mut *connection)
    .await?;
    if !dependents.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "these views use the store's tables and would be dropped with the portable schema: \
             {}; drop them first and create them again afterwards",
            dependents.join(", ")
        )));
    }

    let mut tx = connection.begin().await?;
    let old = "eventstore_portable_moving";
    sqlx::raw_sql(&format!(
        "LOCK TABLE {tables} IN ACCESS EXCLUSIVE MODE; \
         ALTER SCHEMA eventstore RENAME TO {old}; \
         CREATE EXTENSION pg_eventstore VERSION '{version}';",
        tables = STORE_TABLES
            .iter()
            .map(|t| format!("eventstore.{t}"))
            .collect::<Vec<_>>()
            .join(", ")
    ))
    .execute(&mut *tx)
    .await?;
    for table in STORE_TABLES {
        let columns: Vec<String> = sqlx::query_scalar(
            "SELECT quote_ident(attname) FROM pg_catalog.pg_attribute \
             WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped \
             ORDER BY attnum",
        )
        .bind(format!("eventstore.{table}"))
        .fetch_all(&mut *tx)
        .await?;
        let columns = columns.join(", ");
        let copy = if table == "position_base" {
            // The one row the install made takes the old base.
            format!(
                "DELETE FROM eventstore.position_base; \
                 INSERT INTO eventstore.position_base ({columns}) \
                 SELECT {columns} FROM {old}.position_base"
            )
        } else {
            format!(
                "INSERT INTO eventstore.{table} ({columns}) OVERRIDING SYSTEM VALUE \
                 SELECT {columns} FROM {old}.{table} ORDER BY 1"
            )
        };
        sqlx::raw_sql(&copy).execute(&mut *tx).await?;
    }
    sqlx::raw_sql(&format!(
        "SELECT setval(pg_catalog.pg_get_serial_sequence('eventstore.subscription_groups', 'group_id'), \
                s.last_value, s.is_called) \
         FROM {old}.subscription_groups_group_id_seq AS s; \
         DROP SCHEMA {old} CASCADE;"
    ))
    .execute(&mut *tx)
    .await?;
    for migration in extension_runner().get_migrations() {
        sqlx::query(&format!(
            "UPDATE {HISTORY_TABLE} SET checksum = $1 WHERE version = $2"
        ))
        .bind(migration.checksum().to_string())
        .bind(migration.version())
        .execute(&mut *tx)
        .await?;
    }
    let (events, groups): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM eventstore.events), \
                (SELECT count(*) FROM eventstore.subscription_groups)",
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Switched { events, groups })
}
