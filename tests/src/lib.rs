//! Test harness: a fresh database with pg_eventstore for each test, on the server named by
//! `DATABASE_URL` (the README's test command starts a private cluster and sets it).
//!
//! The store is the extension, or the portable form (plain SQL and PL/pgSQL) when
//! `EVENTSTORE_TEST_INSTALL=portable`: the README's test command runs the suite once each
//! way. In the portable form each test database also has the coalescing notifier running,
//! as `eventstore run` runs it beside the projections.

use std::str::FromStr;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

/// Which form of the store the suite runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Install {
    /// `CREATE EXTENSION pg_eventstore`.
    Extension,
    /// The portable install script (`pg_eventstore_client::portable`).
    Portable,
}

/// The form `EVENTSTORE_TEST_INSTALL` asks for: `portable`, or the extension by default.
pub fn install() -> Install {
    match std::env::var("EVENTSTORE_TEST_INSTALL").as_deref() {
        Ok("portable") => Install::Portable,
        Ok("extension") | Ok("") | Err(_) => Install::Extension,
        Ok(other) => panic!("EVENTSTORE_TEST_INSTALL is extension or portable, not {other:?}"),
    }
}

fn template_of(install: Install) -> &'static str {
    match install {
        Install::Extension => "eventstore_test_template",
        Install::Portable => "eventstore_test_template_portable",
    }
}

/// A database of its own, created from a template that has the store, dropped on drop.
pub struct TestDb {
    pub pool: PgPool,
    pub name: String,
    admin: PgConnectOptions,
    notifier: Option<tokio::task::JoinHandle<()>>,
}

fn admin_options() -> PgConnectOptions {
    let url = std::env::var("DATABASE_URL").expect(
        "DATABASE_URL must name a PostgreSQL server with pg_eventstore installed; \
         run the README's test command (scripts/test.sh), which starts one",
    );
    PgConnectOptions::from_str(&url).expect("DATABASE_URL is a valid URL")
}

async fn ensure_template(admin: &mut PgConnection, install: Install) {
    // Test binaries may run at once; one creates the template, the others wait.
    sqlx::query("SELECT pg_advisory_lock(7340001)")
        .execute(&mut *admin)
        .await
        .unwrap();
    let template = template_of(install);
    match install {
        Install::Extension => {
            create_if_missing(admin, template).await;
            // A template left by an older build is brought to the installed version.
            let mut conn = admin_options().database(template).connect().await.unwrap();
            sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_eventstore")
                .execute(&mut conn)
                .await
                .unwrap();
            sqlx::query("ALTER EXTENSION pg_eventstore UPDATE")
                .execute(&mut conn)
                .await
                .unwrap();
            conn.close().await.unwrap();
        }
        Install::Portable => {
            // The script's hash is the template's comment; a template of another build's
            // script is made again.
            let script = pg_eventstore_client::portable::install_script().unwrap();
            let hash = format!("{:016x}", fnv1a(script.as_bytes()));
            let current: Option<Option<String>> = sqlx::query_scalar(
                "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
            )
            .bind(template)
            .fetch_optional(&mut *admin)
            .await
            .unwrap();
            if current != Some(Some(hash.clone())) {
                sqlx::query(&format!("DROP DATABASE IF EXISTS {template} WITH (FORCE)"))
                    .execute(&mut *admin)
                    .await
                    .unwrap();
                create_if_missing(admin, template).await;
                let mut conn = admin_options().database(template).connect().await.unwrap();
                sqlx::raw_sql(&script).execute(&mut conn).await.unwrap();
                conn.close().await.unwrap();
                sqlx::query(&format!("COMMENT ON DATABASE {template} IS '{hash}'"))
                    .execute(&mut *admin)
                    .await
                    .unwrap();
            }
        }
    }
    sqlx::query("SELECT pg_advisory_unlock(7340001)")
        .execute(&mut *admin)
        .await
        .unwrap();
}

async fn create_if_missing(admin: &mut PgConnection, name: &str) {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut *admin)
            .await
            .unwrap();
    if !exists {
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut *admin)
            .await
            .unwrap();
    }
}

/// FNV-1a, 64 bits: tells one build's portable script from another's.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl TestDb {
    /// A new, empty event store with room for `connections` concurrent connections (and,
    /// in the portable form, the notifier's one more).
    pub async fn new(connections: u32) -> TestDb {
        let mut db = Self::create(Some(install()), connections).await;
        if install() == Install::Portable {
            let store = pg_eventstore_client::EventStore::from_pool(
                PgPoolOptions::new()
                    .max_connections(1)
                    .connect_with(db.admin.clone().database(&db.name))
                    .await
                    .unwrap(),
            );
            db.notifier = Some(tokio::spawn(async move {
                pg_eventstore_client::notifier::run(
                    &store,
                    pg_eventstore_client::notifier::DEFAULT_INTERVAL,
                    std::future::pending(),
                )
                .await;
            }));
        }
        db
    }

    /// A new, empty event store with the extension, whichever form the suite runs against
    /// (for the tests that compare the two forms).
    pub async fn with_extension(connections: u32) -> TestDb {
        Self::create(Some(Install::Extension), connections).await
    }

    /// A database without the store, for migration tests.
    pub async fn empty(connections: u32) -> TestDb {
        Self::create(None, connections).await
    }

    /// A database of its own, copied from the template of `template` when given.
    async fn create(template: Option<Install>, connections: u32) -> TestDb {
        let admin = admin_options();
        let mut conn = admin.connect().await.expect("connect to DATABASE_URL");
        let name = format!("es_test_{}", uuid::Uuid::new_v4().simple());
        let create = match template {
            Some(install) => {
                ensure_template(&mut conn, install).await;
                format!("CREATE DATABASE {name} TEMPLATE {}", template_of(install))
            }
            None => format!("CREATE DATABASE {name}"),
        };
        sqlx::query(&create).execute(&mut conn).await.unwrap();
        conn.close().await.unwrap();
        let pool = PgPoolOptions::new()
            .max_connections(connections)
            .connect_with(admin.clone().database(&name))
            .await
            .unwrap();
        TestDb {
            pool,
            name,
            admin,
            notifier: None,
        }
    }

    /// Another pool on this database whose connections carry `application_name`, so a test
    /// can find and terminate them.
    pub async fn pool_named(&self, application_name: &str, connections: u32) -> PgPool {
        PgPoolOptions::new()
            .max_connections(connections)
            .connect_with(
                self.admin
                    .clone()
                    .database(&self.name)
                    .application_name(application_name),
            )
            .await
            .unwrap()
    }

    /// Terminates every connection to this database whose `application_name` is `name`;
    /// returns how many there were.
    pub async fn terminate(&self, application_name: &str) -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = $1",
        )
        .bind(application_name)
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }

    /// The URL of this database, for processes the test starts.
    pub fn url(&self) -> String {
        let url = std::env::var("DATABASE_URL").expect("DATABASE_URL is set");
        let (base, query) = match url.split_once('?') {
            Some((base, query)) => (base, format!("?{query}")),
            None => (url.as_str(), String::new()),
        };
        let (server, _) = base
            .rsplit_once('/')
            .filter(|(server, _)| server.contains("//") && !server.ends_with('/'))
            .unwrap_or((base, ""));
        format!("{server}/{}{query}", self.name)
    }

    /// A connection outside the pool, for tests that hold transactions open.
    pub async fn connect(&self) -> PgConnection {
        self.admin
            .clone()
            .database(&self.name)
            .connect()
            .await
            .unwrap()
    }

    /// Waits until every committed event is readable from the global log; see [`settled`].
    pub async fn settled(&self) {
        settled(&self.pool).await;
    }

    /// Closes the pool and drops the database.
    pub async fn drop_database(self) {
        if let Some(notifier) = &self.notifier {
            notifier.abort();
        }
        self.pool.close().await;
        let mut conn = self.admin.connect().await.unwrap();
        sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&mut conn)
        .await
        .unwrap();
    }
}

/// How long a test waits for a condition before it fails: generous for a loaded 2-core
/// machine, since a condition that holds is met long before it.
pub const PATIENCE: std::time::Duration = std::time::Duration::from_secs(300);

/// Waits until `what` holds, or fails the test after `limit`.
pub async fn eventually<F, Fut>(limit: std::time::Duration, description: &str, mut what: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = std::time::Instant::now();
    while !what().await {
        assert!(
            started.elapsed() < limit,
            "timed out waiting until {description}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Waits until every committed event in `pool`'s database is readable from the global log.
/// Transaction ids are cluster-wide, so a transaction open in another test's database holds
/// back this one's log while it runs; a test that expects to read all it appended waits here.
pub async fn settled(pool: &PgPool) {
    eventually(PATIENCE, "every committed event is readable", || async {
        sqlx::query_scalar::<_, bool>(
            "SELECT eventstore.head_position() = coalesce(max(position), 0) \
                 FROM eventstore.events",
        )
        .fetch_one(pool)
        .await
        .unwrap()
    })
    .await;
}

/// Rows of every table the API writes: events, subscription groups, group events, group
/// leases. A call that fails must leave them as they were.
pub async fn stored_rows<'e>(db: impl sqlx::PgExecutor<'e>) -> (i64, i64, i64, i64) {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM eventstore.events), \
                (SELECT count(*) FROM eventstore.subscription_groups), \
                (SELECT count(*) FROM eventstore.group_events), \
                (SELECT count(*) FROM eventstore.group_leases)",
    )
    .fetch_one(db)
    .await
    .expect("the server answers")
}

/// The SQLSTATE of a failed query, or `None` for success and non-database errors.
pub fn sqlstate<T>(result: &Result<T, sqlx::Error>) -> Option<String> {
    match result {
        Err(error) => error
            .as_database_error()
            .and_then(|e| e.code())
            .map(|c| c.into_owned()),
        Ok(_) => None,
    }
}

/// One event as the global log returns it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LogEntry {
    pub position: i64,
    pub stream: String,
    pub version: i64,
    #[sqlx(rename = "type")]
    pub event_type: String,
    pub id: uuid::Uuid,
}

/// Reads the global log after `after` in pages of `page` until it is exhausted.
pub async fn read_all_from(pool: &PgPool, mut after: i64, page: i32) -> Vec<LogEntry> {
    let mut out = Vec::new();
    loop {
        let batch: Vec<LogEntry> = sqlx::query_as(
            "SELECT position, stream, version, type, id FROM eventstore.read_all($1, $2)",
        )
        .bind(after)
        .bind(page)
        .fetch_all(pool)
        .await
        .unwrap();
        match batch.last() {
            None => return out,
            Some(last) => after = last.position,
        }
        out.extend(batch);
    }
}

/// The `eventstore` binary the tests start as a separate process: `EVENTSTORE_BIN`, or the
/// debug build in this workspace (the README's test command builds it first).
pub fn eventstore_bin() -> std::path::PathBuf {
    let path = std::env::var_os("EVENTSTORE_BIN").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/eventstore"),
        std::path::PathBuf::from,
    );
    assert!(
        path.exists(),
        "{} is missing: build it with cargo build -p pg_eventstore_cli --bin eventstore",
        path.display()
    );
    path
}

/// Where the PostgreSQL 15 programs are.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A PostgreSQL cluster of a test's own, started by `scripts/cluster.sh` in
/// `target/pg/<name>` from an empty folder (with the extension preloaded, like the suite's),
/// and stopped through its data folder when dropped.
pub struct Cluster {
    dir: std::path::PathBuf,
    port: String,
}

/// `scripts/cluster.sh`.
fn cluster_script() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/cluster.sh")
}

impl Cluster {
    /// `target/pg/<name>`, emptied: a cluster a previous run left there is stopped first.
    fn empty_folder(name: &str) -> std::path::PathBuf {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/pg")
            .join(name);
        let _ = std::process::Command::new(cluster_script())
            .args(["stop".as_ref(), dir.as_os_str()])
            .status();
        if dir.exists() {
            std::fs::remove_dir_all(&dir).expect("remove the old cluster folder");
        }
        dir
    }

    /// Starts the cluster in `dir` (initialised there first unless it has a data folder).
    fn start_in(dir: std::path::PathBuf, next_xid: Option<u64>) -> Cluster {
        Self::start_with(dir, next_xid, &[])
    }

    /// Starts a new cluster of a PostgreSQL install that does not offer pg_eventstore
    /// (`scripts/pg-without-extension.sh`), as managed PostgreSQL does not.
    pub fn start_without_extension(name: &str) -> Cluster {
        let install = Self::empty_folder(&format!("{name}-install"));
        let output = std::process::Command::new(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../scripts/pg-without-extension.sh"),
        )
        .arg(&install)
        .output()
        .expect("scripts/pg-without-extension.sh runs");
        assert!(
            output.status.success(),
            "no install without the extension: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let bin = String::from_utf8(output.stdout).unwrap().trim().to_owned();
        Self::start_with(
            Self::empty_folder(name),
            None,
            &[("PGBIN", bin.as_str()), ("EVENTSTORE_PRELOAD", "0")],
        )
    }

    fn start_with(dir: std::path::PathBuf, next_xid: Option<u64>, env: &[(&str, &str)]) -> Cluster {
        let mut start = std::process::Command::new(cluster_script());
        start.args(["start".as_ref(), dir.as_os_str()]);
        start.envs(env.iter().copied());
        if let Some(xid) = next_xid {
            start.env("CLUSTER_NEXT_XID", xid.to_string());
        }
        let output = start.output().expect("scripts/cluster.sh runs");
        assert!(
            output.status.success(),
            "the cluster in {} did not start: {}",
            dir.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        let port = String::from_utf8(output.stdout).unwrap().trim().to_owned();
        Cluster { dir, port }
    }

    /// Starts a new cluster; `next_xid` moves its transaction counter first (pg_resetwal -x),
    /// as on a server that has run a long time.
    pub fn start(name: &str, next_xid: Option<u64>) -> Cluster {
        Self::start_in(Self::empty_folder(name), next_xid)
    }

    /// The URL of `database` on this cluster.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates an empty database.
    pub async fn create_database(&self, name: &str) {
        let mut admin = PgConnection::connect(&self.url("postgres")).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .unwrap();
        admin.close().await.unwrap();
    }

    /// Runs one of PostgreSQL's programs (`pg_dump`, `psql`, ...) with `args`, failing the
    /// test with its output when it fails.
    pub fn run(&self, program: &str, args: &[&str]) -> Vec<u8> {
        let output = std::process::Command::new(std::path::Path::new(PG_BIN).join(program))
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{program} runs: {e}"));
        assert!(
            output.status.success(),
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    }

    /// The cluster's server log.
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// A hot standby of `primary`, streaming from it: a base backup taken now
    /// (`pg_basebackup -R`, which writes the standby's connection to the primary), started in
    /// `target/pg/<name>`. Returns once it accepts read-only connections.
    pub fn standby_of(primary: &Cluster, name: &str) -> Cluster {
        let dir = Self::empty_folder(name);
        std::fs::create_dir_all(&dir).unwrap();
        let backup = std::path::Path::new(PG_BIN).join("pg_basebackup");
        let connection = format!("host=127.0.0.1 port={} user=postgres", primary.port);
        let data = dir.join("data");
        let args: Vec<&std::ffi::OsStr> = vec![
            "-D".as_ref(),
            data.as_os_str(),
            "-R".as_ref(),
            "-X".as_ref(),
            "stream".as_ref(),
            "-c".as_ref(),
            "fast".as_ref(),
            "-d".as_ref(),
            connection.as_ref(),
        ];
        // SAFETY: a plain read of the process' user id.
        let as_root = unsafe { libc::geteuid() } == 0;
        let output = if as_root {
            let _ = std::process::Command::new("chown")
                .args(["postgres:".as_ref(), dir.as_os_str()])
                .status();
            std::process::Command::new("sudo")
                .args(["-u", "postgres", "--"])
                .arg(&backup)
                .args(&args)
                .output()
        } else {
            std::process::Command::new(&backup).args(&args).output()
        }
        .expect("pg_basebackup runs");
        assert!(
            output.status.success(),
            "pg_basebackup failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Self::start_in(dir, None)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new(cluster_script())
            .args(["stop".as_ref(), self.dir.as_os_str()])
            .status();
    }
}

/// The store's objects (the extension's, or the portable form's), one line each, in a
/// stable order: functions with their definitions, tables, columns, constraints, indexes,
/// views, triggers, types, comments, grants and extension membership.
pub async fn catalog(pool: &PgPool) -> std::collections::BTreeSet<String> {
    const QUERIES: &[&str] = &[
        "SELECT 'extension ' || extversion || ' schema ' || extnamespace::regnamespace \
                || ' relocatable ' || extrelocatable \
         FROM pg_extension WHERE extname = 'pg_eventstore'",
        "SELECT 'dumped ' || c::regclass::text || ' where ' || coalesce(w, '') \
         FROM pg_extension, unnest(extconfig, extcondition) AS u(c, w) \
         WHERE extname = 'pg_eventstore'",
        "SELECT 'member ' || pg_describe_object(classid, objid, objsubid) FROM pg_depend \
         WHERE refclassid = 'pg_extension'::regclass AND deptype = 'e' \
           AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'pg_eventstore')",
        "SELECT 'schema comment ' || coalesce(obj_description('eventstore'::regnamespace, \
                'pg_namespace'), '-')",
        "SELECT 'function ' || p.oid::regprocedure::text || ' volatile ' || p.provolatile::text \
                || ' parallel ' || p.proparallel::text || ' strict ' || p.proisstrict \
                || ' security definer ' || p.prosecdef \
                || ' config ' || coalesce(p.proconfig::text, '-') \
                || ' acl ' || coalesce(p.proacl::text, 'default') \
                || ' comment ' || coalesce(obj_description(p.oid, 'pg_proc'), '-') \
                || E'\\n' || pg_get_functiondef(p.oid) \
         FROM pg_proc p WHERE p.pronamespace = 'eventstore'::regnamespace",
        "SELECT 'relation ' || c.relname || ' kind ' || c.relkind::text \
                || ' persistence ' || c.relpersistence::text \
                || ' acl ' || coalesce(c.relacl::text, 'default') \
                || ' options ' || coalesce(c.reloptions::text, '-') \
                || ' comment ' || coalesce(obj_description(c.oid, 'pg_class'), '-') \
         FROM pg_class c WHERE c.relnamespace = 'eventstore'::regnamespace",
        "SELECT 'column ' || c.relname || ' #' \
                || row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum) \
                || ' ' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod) \
                || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END \
                || ' default ' || coalesce(pg_get_expr(d.adbin, d.adrelid), '-') \
                || ' identity ' || a.attidentity::text || ' generated ' || a.attgenerated::text \
                || ' collation ' || a.attcollation::regcollation::text \
                || ' acl ' || coalesce(a.attacl::text, 'default') \
                || ' comment ' || coalesce(col_description(c.oid, a.attnum), '-') \
         FROM pg_class c \
         JOIN pg_attribute a ON a.attrelid = c.oid \
         LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum \
         WHERE c.relnamespace = 'eventstore'::regnamespace AND a.attnum > 0 \
           AND NOT a.attisdropped",
        "SELECT 'constraint ' || conrelid::regclass::text || ' ' || conname || ' ' \
                || pg_get_constraintdef(oid) \
                || ' comment ' || coalesce(obj_description(oid, 'pg_constraint'), '-') \
         FROM pg_constraint WHERE connamespace = 'eventstore'::regnamespace",
        "SELECT 'index ' || pg_get_indexdef(i.indexrelid) \
         FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
         WHERE c.relnamespace = 'eventstore'::regnamespace",
        "SELECT 'view ' || c.relname || E'\\n' || pg_get_viewdef(c.oid) \
         FROM pg_class c \
         WHERE c.relnamespace = 'eventstore'::regnamespace AND c.relkind IN ('v', 'm')",
        "SELECT 'trigger ' || pg_get_triggerdef(t.oid) || ' enabled ' || t.tgenabled::text \
                || ' comment ' || coalesce(obj_description(t.oid, 'pg_trigger'), '-') \
         FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid \
         WHERE c.relnamespace = 'eventstore'::regnamespace AND NOT t.tgisinternal",
        "SELECT 'type ' || t.typname || ' ' || t.typtype::text \
                || ' comment ' || coalesce(obj_description(t.oid, 'pg_type'), '-') \
         FROM pg_type t WHERE t.typnamespace = 'eventstore'::regnamespace",
        "SELECT 'sequence ' || s.seqrelid::regclass::text || ' ' || s.seqtypid::regtype::text \
                || ' ' || s.seqstart || ' ' || s.seqincrement || ' ' || s.seqmax \
         FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid \
         WHERE c.relnamespace = 'eventstore'::regnamespace",
        "SELECT 'policy ' || polname || ' on ' || polrelid::regclass::text \
         FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid \
         WHERE c.relnamespace = 'eventstore'::regnamespace",
    ];
    let mut lines = std::collections::BTreeSet::new();
    for query in QUERIES {
        let rows: Vec<String> = sqlx::query_scalar(query)
            .fetch_all(pool)
            .await
            .unwrap_or_else(|error| panic!("{query}: {error}"));
        lines.extend(rows);
    }
    lines
}

/// Runs `eventstore migrate` on the database at `url`: the store's, the shop's and the
/// server's migration sets.
pub async fn eventstore_migrate(url: &str) {
    let status = tokio::process::Command::new(eventstore_bin())
        .arg("migrate")
        .env("DATABASE_URL", url)
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .expect("eventstore migrate runs");
    assert!(status.success(), "eventstore migrate failed: {status}");
}

/// `eventstore serve` on a free loopback port of its own, for the database at `url`; killed
/// when dropped unless stopped first.
pub struct Served {
    child: tokio::process::Child,
    /// The connection string EventStoreDB's clients take: `esdb://127.0.0.1:<port>?tls=false`.
    pub esdb_url: String,
}

impl Served {
    /// Starts the server and waits (up to a minute) until it says it listens.
    pub async fn start(url: &str) -> Served {
        Self::start_with(url, &[]).await
    }

    /// [`Served::start`] with more arguments for `eventstore serve`.
    pub async fn start_with(url: &str, args: &[&str]) -> Served {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(eventstore_bin())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("DATABASE_URL", url)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("eventstore serve starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(std::time::Duration::from_secs(60), lines.next_line())
            .await
            .expect("eventstore serve says where it listens within a minute")
            .expect("its stdout is readable")
            .expect("eventstore serve prints the address it serves");
        let esdb_url = line
            .strip_prefix("serving ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        // Keep draining stdout so that the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Served { child, esdb_url }
    }

    /// The server's HTTP address, `http://127.0.0.1:<port>` (no TLS).
    pub fn http_url(&self) -> String {
        let address = self
            .esdb_url
            .strip_prefix("esdb://")
            .and_then(|rest| rest.split('?').next())
            .expect("esdb://ADDRESS?...");
        format!("http://{address}")
    }

    /// Sends SIGTERM and waits (up to a minute) for the server to exit; returns its status.
    pub async fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().expect("still running") as libc::pid_t;
        // SAFETY: kill(2) on the pid of our own child process.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        tokio::time::timeout(std::time::Duration::from_secs(60), self.child.wait())
            .await
            .expect("eventstore serve exits within a minute of SIGTERM")
            .expect("wait for eventstore serve")
    }
}

/// The group role whose members log in with a password the test cluster checks: it trusts
/// every other role's loopback connections.
pub const CHECKED: &str = "eventstore_test_password_checked";
/// The password of the roles [`role_with_password`] makes.
pub const PASSWORD: &str = "correct-horse-battery-staple";

/// Adds the `scram-sha-256` rules for [`CHECKED`]'s members to the cluster's `pg_hba.conf`
/// once (ahead of its `trust` rules) and reloads it.
pub async fn check_passwords(pool: &PgPool) {
    static ONCE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    ONCE.get_or_init(|| async {
        sqlx::query(&format!(
            "DO $$ BEGIN \
               IF pg_catalog.to_regrole('{CHECKED}') IS NULL THEN CREATE ROLE {CHECKED} NOLOGIN; END IF; \
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
        ))
        .execute(pool)
        .await
        .expect("the group role");
        let file: String = sqlx::query_scalar("SHOW hba_file")
            .fetch_one(pool)
            .await
            .expect("hba_file");
        let rules = std::fs::read_to_string(&file).expect("pg_hba.conf is readable");
        if !rules.contains(CHECKED) {
            let checked = format!(
                "# eventstore's web tests: their roles' passwords are checked\n\
                 host all +{CHECKED} 127.0.0.1/32 scram-sha-256\n\
                 host all +{CHECKED} ::1/128 scram-sha-256\n"
            );
            std::fs::write(&file, format!("{checked}{rules}")).expect("pg_hba.conf is writable");
        }
        sqlx::query("SELECT pg_reload_conf()")
            .execute(pool)
            .await
            .expect("reload");
    })
    .await;
}

/// A login role with [`PASSWORD`], member of `member_of`, whose password PostgreSQL checks;
/// returns its name once a wrong password is refused for it.
pub async fn role_with_password(db: &TestDb, member_of: &str) -> String {
    check_passwords(&db.pool).await;
    let role = format!("ui_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    sqlx::query(&format!(
        "CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}' IN ROLE {member_of}, {CHECKED}"
    ))
    .execute(&db.pool)
    .await
    .expect("create the role");
    let url = db.url();
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let wrong = url.replacen(
            "postgres://postgres@",
            &format!("postgres://{role}:wrong@"),
            1,
        );
        assert_ne!(
            wrong, url,
            "DATABASE_URL is postgres://postgres@HOST:PORT/..."
        );
        match sqlx::PgConnection::connect(&wrong).await {
            Err(error)
                if error.as_database_error().and_then(|e| e.code()).as_deref() == Some("28P01") =>
            {
                break
            }
            _ => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "PostgreSQL never started checking {role}'s password"
                );
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    role
}
