//! [`EventStore`]: appends and reads on a pool, or in the caller's transaction.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgExecutor, PgPool, Row};

use crate::read::{paged, Cursor, Source};
use crate::subscription::{
    Listener, SharedFeed, SharedListener, Subscription, SubscriptionOptions, Target, WakeUps,
};
use crate::{
    migrations::{self, Form, Install, MigrationSet, Switched},
    AppendResult, AppliedMigration, Error, EventData, EventStream, ExpectedVersion, ReadAllOptions,
    ReadStreamOptions, Result,
};
use std::sync::Arc;

/// How long a pooled connection may sit idle and still be handed out without a ping.
const TRUSTED_IDLE: Duration = Duration::from_secs(1);

/// The settings of the store's own pools ([`EventStore::connect`], and those of
/// `eventstore serve`), for callers that build their pool themselves.
///
/// sqlx tests every connection it hands out with a ping by default: one more round trip to
/// the server before each call (about 75 µs on loopback on a 2-core machine, a fifth of a
/// one-event append). It also pings each connection it takes back, so here one used less
/// than a second ago is handed out as it is, and only one idle for longer is pinged first
/// (and replaced when the ping fails).
pub fn pool_options() -> PgPoolOptions {
    PgPoolOptions::new()
        .test_before_acquire(false)
        .before_acquire(|connection, meta| {
            Box::pin(
                async move { Ok(meta.idle_for < TRUSTED_IDLE || connection.ping().await.is_ok()) },
            )
        })
}

/// A handle on an event store database: cheap to clone, safe to share between tasks.
///
/// Subscriptions of one `EventStore` (and its clones) share one listening connection.
#[derive(Clone, Debug)]
pub struct EventStore {
    pool: PgPool,
    listener: Arc<SharedListener>,
    feed: Arc<SharedFeed>,
}

impl EventStore {
    /// Connects a pool of up to 10 connections to `url`
    /// (`postgres://user@host:port/database`). The first connection is made at once, so a
    /// server that cannot be reached is [`Error::Unreachable`] right away.
    pub async fn connect(url: &str) -> Result<Self> {
        let options = PgConnectOptions::from_str(url).map_err(|error| {
            Error::InvalidArgument(format!("{url:?} is not a PostgreSQL URL: {error}"))
        })?;
        let first = PgConnection::connect_with(&options)
            .await
            .map_err(|source| {
                match source.as_database_error().and_then(|db| db.code()) {
                    // The server answered: its refusal tells what is wrong.
                    Some(_) => Error::from(source),
                    None => Error::Unreachable {
                        server: server_of(&options),
                        source,
                    },
                }
            })?;
        let _ = first.close().await;
        let pool = pool_options()
            .max_connections(10)
            .connect_lazy_with(options);
        Ok(Self::from_pool(pool))
    }

    /// Uses an existing pool. Subscriptions take one of its connections for listening.
    pub fn from_pool(pool: PgPool) -> Self {
        EventStore {
            pool,
            listener: Arc::default(),
            feed: Arc::default(),
        }
    }

    /// The pool, for the caller's own queries and transactions.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies the store's migrations (`migrations/eventstore`: the extension and the
    /// projection checkpoints) not yet applied to this database, each in its own
    /// transaction, and returns those it applied. Concurrent callers take turns on an
    /// advisory lock. It creates nothing else: read models come with their own sets
    /// ([`EventStore::migrate_set`]).
    ///
    /// A database without the store gets the extension when the server offers it, and the
    /// portable form ([`crate::portable`]) otherwise; [`EventStore::migrate_with`] chooses.
    pub async fn migrate(&self) -> Result<Vec<AppliedMigration>> {
        self.migrate_with(Install::Auto).await
    }

    /// [`EventStore::migrate`], with the form a database without the store gets. A database
    /// that has the store keeps its form; asking for the portable form where the extension
    /// is installed is an error.
    pub async fn migrate_with(&self, install: Install) -> Result<Vec<AppliedMigration>> {
        self.run_migrations(MigrationSet::Store(install)).await
    }

    /// Moves a database that has the portable form to the native extension (after moving it
    /// to a server that offers the library), keeping every event at its position, every
    /// group with its leases, retries and parked events, and the projection checkpoints; then
    /// applies the store's migrations still pending. One transaction: on any error nothing
    /// changes. Needs a role that may `CREATE EXTENSION pg_eventstore` (a superuser). Calls
    /// waiting on the store's tables meanwhile fail when it commits; stop writers first.
    pub async fn switch_to_extension(&self) -> Result<(Switched, Vec<AppliedMigration>)> {
        let switched = {
            let mut connection = self.pool.acquire().await?;
            migrations::switch_to_extension(&mut connection).await?
        };
        let applied = self.migrate().await?;
        Ok((switched, applied))
    }

    /// The form of the store in this database, or `None` before it is installed.
    pub async fn installed_form(&self) -> Result<Option<Form>> {
        let mut connection = self.pool.acquire().await?;
        migrations::installed_form(&mut connection).await
    }

    /// Applies another set of refinery migrations (an application's read models, embedded
    /// with `refinery::embed_migrations!`), recording them in `history_table`, a lower-case
    /// SQL identifier of the set's own: two sets never share one. Same locking and
    /// transactions as [`EventStore::migrate`].
    pub async fn migrate_set(
        &self,
        runner: refinery::Runner,
        history_table: &str,
    ) -> Result<Vec<AppliedMigration>> {
        // A connection of its own, so the session-level lock cannot outlive a cancelled call
        // inside the pool.
        self.run_migrations(MigrationSet::Other(runner, history_table))
            .await
    }

    async fn run_migrations(&self, set: MigrationSet<'_>) -> Result<Vec<AppliedMigration>> {
        let mut connection = PgConnection::connect_with(&self.pool.connect_options()).await?;
        let applied = migrations::run(&mut connection, set).await;
        let _ = connection.close().await;
        applied
    }

    /// Appends `events` to `stream` atomically if the stream's version meets `expected`.
    ///
    /// A stream at another version yields [`Error::WrongExpectedVersion`] with both versions,
    /// and nothing is written. Events that carry ids, re-sent after a lost reply, are
    /// recognised and not written twice.
    pub async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: impl IntoIterator<Item = EventData>,
    ) -> Result<AppendResult> {
        Self::append_in(&self.pool, stream, expected, events).await
    }

    /// [`EventStore::append`] on `executor`: the pool, a connection, or the caller's own
    /// transaction (`&mut *tx`), whose commit then decides whether the events exist. A wrong
    /// expected version leaves the transaction usable.
    pub async fn append_in<'e>(
        executor: impl PgExecutor<'e>,
        stream: &str,
        expected: ExpectedVersion,
        events: impl IntoIterator<Item = EventData>,
    ) -> Result<AppendResult> {
        let events: Vec<EventData> = events.into_iter().collect();
        if events.is_empty() {
            return Err(Error::InvalidArgument(
                "an append needs at least one event".to_owned(),
            ));
        }
        let row = sqlx::query(
            "SELECT first_version, last_version, first_position, last_position, current_version \
             FROM eventstore.try_append($1, $2, $3)",
        )
        .bind(stream)
        .bind(sqlx::types::Json(&events))
        .bind(expected.to_sql()?)
        .fetch_one(executor)
        .await?;
        let first_version: Option<i64> = row.try_get(0)?;
        if first_version.is_none() {
            let current: i64 = row.try_get(4)?;
            return Err(Error::WrongExpectedVersion {
                stream: stream.to_owned(),
                expected,
                actual: u64::try_from(current).ok(),
            });
        }
        let column = |index: usize| -> Result<u64> {
            let value: i64 = row.try_get(index)?;
            u64::try_from(value).map_err(|_| {
                Error::Database(sqlx::Error::Decode(
                    format!("append returned a negative value {value}").into(),
                ))
            })
        };
        Ok(AppendResult {
            first_version: column(0)?,
            last_version: column(1)?,
            first_position: column(2)?,
            last_position: column(3)?,
        })
    }

    /// The stream's last version, or `None` when it does not exist.
    pub async fn stream_version(&self, stream: &str) -> Result<Option<u64>> {
        Self::stream_version_in(&self.pool, stream).await
    }

    /// [`EventStore::stream_version`] on `executor` (pool, connection or transaction).
    pub async fn stream_version_in<'e>(
        executor: impl PgExecutor<'e>,
        stream: &str,
    ) -> Result<Option<u64>> {
        let version: i64 = sqlx::query_scalar("SELECT eventstore.stream_version($1)")
            .bind(stream)
            .fetch_one(executor)
            .await?;
        Ok(u64::try_from(version).ok())
    }

    /// The position of the newest event the global log can hand out now (0: none).
    pub async fn head_position(&self) -> Result<u64> {
        let head: i64 = sqlx::query_scalar("SELECT eventstore.head_position()")
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(head).unwrap_or_default())
    }

    /// Reads one stream, a page at a time.
    pub fn read_stream(&self, stream: &str, options: ReadStreamOptions) -> EventStream<'static> {
        read_stream(Source::Pool(self.pool.clone()), stream, options)
    }

    /// [`EventStore::read_stream`] on the caller's connection or transaction (`&mut *tx`).
    pub fn read_stream_in<'c>(
        connection: &'c mut PgConnection,
        stream: &str,
        options: ReadStreamOptions,
    ) -> EventStream<'c> {
        read_stream(Source::Connection(connection), stream, options)
    }

    /// Reads the global log in position order, a page at a time. It never skips or repeats
    /// a committed event: resuming after the last position read continues exactly there.
    pub fn read_all(&self, options: ReadAllOptions) -> EventStream<'static> {
        read_all(Source::Pool(self.pool.clone()), options)
    }

    /// [`EventStore::read_all`] on the caller's connection or transaction.
    pub fn read_all_in(connection: &mut PgConnection, options: ReadAllOptions) -> EventStream<'_> {
        read_all(Source::Connection(connection), options)
    }

    /// Reads one category (streams `category-*`) in position order, optionally only some
    /// event types, or only one consumer-group member's streams (not both).
    pub fn read_category(&self, category: &str, options: ReadAllOptions) -> EventStream<'static> {
        read_category(Source::Pool(self.pool.clone()), category, options)
    }

    /// [`EventStore::read_category`] on the caller's connection or transaction.
    pub fn read_category_in<'c>(
        connection: &'c mut PgConnection,
        category: &str,
        options: ReadAllOptions,
    ) -> EventStream<'c> {
        read_category(Source::Connection(connection), category, options)
    }

    /// Follows the global log: catches up from `options`' position, then delivers new events
    /// as they become readable. See [`Subscription`].
    pub fn subscribe_to_all(&self, options: SubscriptionOptions) -> Subscription {
        self.subscribe(Target::All, options)
    }

    /// Follows one category (streams `category-*`).
    pub fn subscribe_to_category(
        &self,
        category: &str,
        options: SubscriptionOptions,
    ) -> Subscription {
        self.subscribe(Target::Category(category.to_owned()), options)
    }

    /// Follows one stream from `options`' version ([`SubscriptionOptions::from_version`]).
    pub fn subscribe_to_stream(&self, stream: &str, options: SubscriptionOptions) -> Subscription {
        self.subscribe(Target::Stream(stream.to_owned()), options)
    }

    /// Wake-ups on new events, for code that waits for the log without a [`Subscription`]
    /// of its own (a server fetching for a subscription group's consumers, say). They share
    /// the store's one `LISTEN eventstore` connection.
    ///
    /// [`Subscription`]: crate::Subscription
    pub fn wake_ups(&self) -> WakeUps {
        WakeUps::new(self.listener())
    }

    /// The shared `LISTEN eventstore` connection, started if need be; it stays up while the
    /// returned handle lives.
    pub(crate) fn listener(&self) -> Arc<Listener> {
        self.listener.get(&self.pool)
    }

    fn subscribe(&self, target: Target, options: SubscriptionOptions) -> Subscription {
        let listener = self.listener();
        let feed = match target {
            Target::Stream(_) => None,
            Target::All | Target::Category(_) => {
                Some(self.feed.get(&self.pool, Arc::clone(&listener)))
            }
        };
        Subscription::start(self.pool.clone(), listener, feed, target, options)
    }
}

fn read_stream<'c>(
    source: Source<'c>,
    stream: &str,
    options: ReadStreamOptions,
) -> EventStream<'c> {
    let next = match (options.from_version, options.backwards) {
        (Some(version), _) => Some(version),
        (None, false) => Some(0),
        (None, true) => None,
    };
    paged(
        source,
        Cursor::Stream {
            stream: stream.to_owned(),
            next,
            backwards: options.backwards,
        },
        options.page_size,
        options.limit,
    )
}

fn read_all(source: Source<'_>, options: ReadAllOptions) -> EventStream<'_> {
    let cursor = match options.backwards {
        Some(before) => Cursor::AllBackwards {
            before,
            event_types: options.event_types,
            categories: options.categories,
        },
        None => Cursor::All {
            after: options.after,
            event_types: options.event_types,
            categories: options.categories,
        },
    };
    paged(source, cursor, options.page_size, options.limit)
}

fn read_category<'c>(
    source: Source<'c>,
    category: &str,
    options: ReadAllOptions,
) -> EventStream<'c> {
    if options.consumer_group.is_none() {
        // The global log's filters cover a category read with event types as well.
        return read_all(
            source,
            ReadAllOptions {
                categories: Some(vec![category.to_owned()]),
                ..options
            },
        );
    }
    if options.event_types.is_some() || options.categories.is_some() || options.backwards.is_some()
    {
        let error = Error::InvalidArgument(
            "a consumer-group read of a category takes no event-type or category filters and \
             reads forwards only"
                .to_owned(),
        );
        return Box::pin(futures_util::stream::once(async move { Err(error) }));
    }
    paged(
        source,
        Cursor::Category {
            category: category.to_owned(),
            after: options.after,
            consumer_group: options.consumer_group,
        },
        options.page_size,
        options.limit,
    )
}

/// `host:port`, or the socket folder, of `options`.
fn server_of(options: &PgConnectOptions) -> String {
    match options.get_socket() {
        Some(socket) => socket.display().to_string(),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    }
}
