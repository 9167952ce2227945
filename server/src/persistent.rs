//! The PersistentSubscriptions service: competing consumers over the store's subscription
//! groups (kurrentdb-wire.md §6).
//!
//! A persistent subscription (a stream or `$all`, and a group name) is the store group
//! `<stream>::<group>`, EventStoreDB's own name for it, which holds its progress, leases and
//! parked events; `kurrentdb.persistent_subscriptions` keeps what only the protocol knows
//! (`migrations/kurrentdb`). Every Read call is one consumer of that group, named by the
//! call, which fetches as many events as the client has room for (`buffer_size`) and
//! settles them as the client acks and nacks.
//!
//! Which events a subscription gets:
//! - `$all`: every event; `$ce-<category>` and `$et-<type>`: the group's category or event
//!   type, which the store selects itself;
//! - any other stream: the group takes that stream's category, and the server delivers only
//!   the stream's own events from the start revision on;
//! - a filtered `$all`: the server applies the filter.
//!
//! Events the server does not deliver are acked unseen, so they never hold the group back.
//!
//! The settings map onto the group: `message_timeout` is the lease timeout, after which an
//! unacked event goes out again; `max_retry_count` retries park an event (it is delivered
//! at most `max_retry_count + 1` times).
//!
//! The consumer strategies:
//! - `RoundRobin` and `DispatchToSingle` are the store's plain groups: each event goes to one
//!   connection, with no order promised; a connection is handed as many events as it has room
//!   for when it asks, so the distribution follows the connections' free room rather than a
//!   strict rotation or a fill-one-first order.
//! - `Pinned` is the store's group ordered by stream: a stream's events go to one connection
//!   at a time, in version order. Unlike EventStoreDB's pinning, which only prefers one
//!   connection per stream, the order holds across retries, and a parked event holds its
//!   stream's later events back until it is replayed (the store's `drop_parked` lets them go).
//! - `PinnedByCorrelation` has no equivalent (the store keeps order by stream, not by
//!   correlation id) and is refused.
//!
//! The buffer and checkpoint sizes are kept and reported, and change nothing: the store
//! checkpoints each ack as it commits.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::Stream;
use pg_eventstore_client::{Error, EventStore, GroupEvent, ReadStreamOptions, RecordedEvent};
use sqlx::postgres::PgRow;
use sqlx::Row;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tonic::{Code, Request, Response, Status, Streaming};
use uuid::Uuid;

use crate::callers::Callers;
use crate::codec;
use crate::proto::persistent::create_req::all_options::{AllOption, FilterOption};
use crate::proto::persistent::persistent_subscriptions_server::PersistentSubscriptions;
use crate::proto::persistent::read_req::nack::Action;
use crate::proto::persistent::read_req::options::uuid_option;
use crate::proto::persistent::read_req::Content as ReadContent;
use crate::proto::persistent::read_resp::{self, read_event, Content};
use crate::proto::persistent::settings::{CheckpointAfter, MessageTimeout};
use crate::proto::persistent::stream_options::RevisionOption;
use crate::proto::persistent::subscription_info::ConnectionInfo;
use crate::proto::persistent::{
    create_req, delete_req, get_info_req, list_req, read_req, replay_parked_req, update_req,
    ConsumerStrategy, CreateReq, CreateResp, DeleteReq, DeleteResp, GetInfoReq, GetInfoResp,
    ListReq, ListResp, ReadReq, ReadResp, ReplayParkedReq, ReplayParkedResp, Settings,
    StreamOptions, SubscriptionInfo, UpdateReq, UpdateResp,
};
use crate::proto::shared::{Empty, StreamIdentifier};
use crate::status::{self, invalid, with_trailers};
use crate::streams::Filter;
use crate::web::metrics::Metrics;

/// The event source of `$all` groups, as the clients name it.
const ALL: &str = "$all";

/// How often a connection looks for events without a wake-up: lease time-outs wake no one.
const POLL: Duration = Duration::from_secs(1);

/// The in-flight events a connection takes when it asks for none (the clients' default).
const DEFAULT_BUFFER: u32 = 10;

/// The largest buffer a connection may ask for.
const MAX_BUFFER: u32 = 1_000;

/// The message timeout of a group whose request gives none (the clients' default).
const DEFAULT_MESSAGE_TIMEOUT_MS: i64 = 30_000;

/// The checkpoint interval reported for a group whose request gives none.
const DEFAULT_CHECKPOINT_AFTER_MS: i64 = 2_000;

/// The strategy names accepted (PinnedByCorrelation, the protocol's fourth, is refused).
const STRATEGIES: [&str; 3] = ["DispatchToSingle", "RoundRobin", "Pinned"];

/// What a subscription follows.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Source {
    Stream(String),
    All,
}

impl Source {
    fn name(&self) -> &str {
        match self {
            Source::Stream(stream) => stream,
            Source::All => ALL,
        }
    }

    /// The source a stream name names: `$all`, or that stream.
    fn of_name(name: String) -> Source {
        if name == ALL {
            Source::All
        } else {
            Source::Stream(name)
        }
    }

    fn of_identifier(identifier: Option<&StreamIdentifier>) -> Result<Source, Status> {
        let stream = codec::stream_name(identifier).map_err(status::codec)?;
        if stream.is_empty() {
            return Err(invalid("the stream name must not be empty"));
        }
        Ok(Source::of_name(stream))
    }

    /// The source a request names: a stream (`Some(identifier)`) or `$all` (`None`), in
    /// whichever of its request's `stream_option` types; `request` names the request in the
    /// error when it names neither.
    fn named(choice: Option<Option<StreamIdentifier>>, request: &str) -> Result<Source, Status> {
        match choice {
            Some(Some(identifier)) => Source::of_identifier(Some(&identifier)),
            Some(None) => Ok(Source::All),
            None => Err(invalid(format!("a {request} names a stream or $all"))),
        }
    }

    /// The store group of the subscription group `group` of this source.
    fn group_name(&self, group: &str) -> String {
        format!("{}::{group}", self.name())
    }
}

/// Where a new group starts: a revision for a stream, a commit position for `$all`; both
/// inclusive.
#[derive(Clone, Copy, Debug)]
enum Start {
    Beginning,
    End,
    At(u64),
}

/// A failure status of §6 on the group of (`source`, `group`): `code`, the `exception`
/// trailer and the stream and group trailers, with `what` saying what happened.
fn group_status(code: Code, exception: &str, source: &Source, group: &str, what: &str) -> Status {
    with_trailers(
        code,
        format!(
            "persistent subscription group {group:?} on {:?} {what}",
            source.name()
        ),
        &[
            ("exception", exception),
            ("stream-name", source.name()),
            ("group-name", group),
        ],
    )
}

fn not_found(source: &Source, group: &str) -> Status {
    group_status(
        Code::NotFound,
        "persistent-subscription-does-not-exist",
        source,
        group,
        "does not exist",
    )
}

fn exists(source: &Source, group: &str) -> Status {
    group_status(
        Code::AlreadyExists,
        "persistent-subscription-exists",
        source,
        group,
        "already exists",
    )
}

fn dropped(source: &Source, group: &str, why: &str) -> Status {
    group_status(
        Code::Cancelled,
        "persistent-subscription-dropped",
        source,
        group,
        &format!("was dropped: {why}"),
    )
}

/// The status for a store error on the group of (`source`, `group`).
fn store_error(source: &Source, group: &str, error: Error) -> Status {
    match error {
        Error::GroupNotFound(_) => not_found(source, group),
        Error::GroupExists(_) => exists(source, group),
        error if error.sqlstate().as_deref() == Some("42P01") => Status::failed_precondition(
            "persistent subscriptions need the server's tables: run `eventstore migrate`",
        ),
        error => status::store(error),
    }
}

/// The protocol's settings of a group, checked, as the store and the table keep them.
struct GroupOptions {
    message_timeout_ms: i32,
    max_retry_count: i32,
    strategy: String,
    max_subscriber_count: i32,
    resolve_links: bool,
    extra_statistics: bool,
    checkpoint_after_ms: i32,
    min_checkpoint_count: i32,
    max_checkpoint_count: i32,
    live_buffer_size: i32,
    read_batch_size: i32,
    history_buffer_size: i32,
}

impl GroupOptions {
    fn parse(settings: Option<Settings>, create: bool) -> Result<GroupOptions, Status> {
        let settings = settings.unwrap_or_default();
        let message_timeout_ms = match settings.message_timeout {
            Some(MessageTimeout::MessageTimeoutMs(ms)) => i64::from(ms),
            Some(MessageTimeout::MessageTimeoutTicks(ticks)) => ticks / 10_000,
            None => DEFAULT_MESSAGE_TIMEOUT_MS,
        };
        if message_timeout_ms <= 0 {
            return Err(invalid(format!(
                "the message timeout must be at least 1 ms, got {message_timeout_ms} ms"
            )));
        }
        let checkpoint_after_ms = match settings.checkpoint_after {
            Some(CheckpointAfter::CheckpointAfterMs(ms)) => i64::from(ms),
            Some(CheckpointAfter::CheckpointAfterTicks(ticks)) => ticks / 10_000,
            None => DEFAULT_CHECKPOINT_AFTER_MS,
        };
        for (what, value) in [
            ("max_retry_count", i64::from(settings.max_retry_count)),
            (
                "max_subscriber_count",
                i64::from(settings.max_subscriber_count),
            ),
            ("checkpoint_after", checkpoint_after_ms),
            (
                "min_checkpoint_count",
                i64::from(settings.min_checkpoint_count),
            ),
            (
                "max_checkpoint_count",
                i64::from(settings.max_checkpoint_count),
            ),
            ("live_buffer_size", i64::from(settings.live_buffer_size)),
            ("read_batch_size", i64::from(settings.read_batch_size)),
            (
                "history_buffer_size",
                i64::from(settings.history_buffer_size),
            ),
        ] {
            if value < 0 {
                return Err(invalid(format!("{what} must not be negative, got {value}")));
            }
        }
        let (Ok(message_timeout_ms), Ok(checkpoint_after_ms)) = (
            i32::try_from(message_timeout_ms),
            i32::try_from(checkpoint_after_ms),
        ) else {
            return Err(invalid(
                "the message timeout and checkpoint interval must fit 32 bits",
            ));
        };
        let strategy = if create && !settings.consumer_strategy.is_empty() {
            if settings.consumer_strategy == "PinnedByCorrelation" {
                return Err(invalid(
                    "the PinnedByCorrelation strategy has no equivalent here: groups keep \
                     events in order by stream (Pinned), not by correlation id",
                ));
            }
            if !STRATEGIES.contains(&settings.consumer_strategy.as_str()) {
                return Err(invalid(format!(
                    "unknown consumer strategy {:?}: the strategies are {}",
                    settings.consumer_strategy,
                    STRATEGIES.join(", ")
                )));
            }
            settings.consumer_strategy
        } else {
            let strategy =
                ConsumerStrategy::try_from(settings.named_consumer_strategy).map_err(|_| {
                    invalid(format!(
                        "unknown consumer strategy {}",
                        settings.named_consumer_strategy
                    ))
                })?;
            strategy.as_str_name().to_owned()
        };
        Ok(GroupOptions {
            message_timeout_ms,
            max_retry_count: settings.max_retry_count,
            strategy,
            max_subscriber_count: settings.max_subscriber_count,
            resolve_links: settings.resolve_links,
            extra_statistics: settings.extra_statistics,
            checkpoint_after_ms,
            min_checkpoint_count: settings.min_checkpoint_count,
            max_checkpoint_count: settings.max_checkpoint_count,
            live_buffer_size: settings.live_buffer_size,
            read_batch_size: settings.read_batch_size,
            history_buffer_size: settings.history_buffer_size,
        })
    }

    fn max_attempts(&self) -> i32 {
        self.max_retry_count.saturating_add(1)
    }

    fn lease_timeout(&self) -> Duration {
        Duration::from_millis(u64::try_from(self.message_timeout_ms).unwrap_or(1))
    }

    /// Whether the store's group keeps each stream's events in order (see the module
    /// documentation).
    fn ordered_by_stream(&self) -> bool {
        self.strategy == "Pinned"
    }
}

/// The start revision of the legacy request shape.
fn legacy_start(revision: u64) -> Start {
    match revision {
        0 => Start::Beginning,
        u64::MAX => Start::End,
        revision => Start::At(revision),
    }
}

fn stream_start(options: &StreamOptions) -> Start {
    match options.revision_option {
        Some(RevisionOption::Revision(revision)) => Start::At(revision),
        Some(RevisionOption::Start(Empty {})) => Start::Beginning,
        Some(RevisionOption::End(Empty {})) | None => Start::End,
    }
}

/// A parsed CreateReq.
struct Creation {
    source: Source,
    group: String,
    start: Start,
    filter: Option<Filter>,
    options: GroupOptions,
}

impl Creation {
    fn parse(request: CreateReq) -> Result<Creation, Status> {
        let options = request
            .options
            .ok_or_else(|| invalid("a create request needs its options"))?;
        let group = group_name(options.group_name)?;
        let revision = options.settings.as_ref().map_or(0, |s| s.revision);
        let (source, start, filter) = match options.stream_option {
            Some(create_req::options::StreamOption::Stream(stream)) => (
                Source::of_identifier(stream.stream_identifier.as_ref())?,
                stream_start(&stream),
                None,
            ),
            Some(create_req::options::StreamOption::All(all)) => {
                let start = match all.all_option {
                    Some(AllOption::Position(position)) => Start::At(position.commit_position),
                    Some(AllOption::Start(Empty {})) => Start::Beginning,
                    Some(AllOption::End(Empty {})) | None => Start::End,
                };
                let filter = match all.filter_option {
                    Some(FilterOption::Filter(filter)) => Some(Filter::parse(filter)?),
                    Some(FilterOption::NoFilter(Empty {})) | None => None,
                };
                (Source::All, start, filter)
            }
            None => (
                Source::of_identifier(options.stream_identifier.as_ref())?,
                legacy_start(revision),
                None,
            ),
        };
        Ok(Creation {
            source,
            group,
            start,
            filter,
            options: GroupOptions::parse(options.settings, true)?,
        })
    }
}

fn group_name(group: String) -> Result<String, Status> {
    if group.is_empty() {
        return Err(invalid("the group name must not be empty"));
    }
    Ok(group)
}

/// How a new group selects its events and where it starts, in the store's terms.
struct Placement {
    categories: Option<Vec<String>>,
    event_types: Option<Vec<String>>,
    from_position: u64,
    /// The stream and first revision the server delivers, for a plain stream.
    stream: Option<(String, u64)>,
    start_from: String,
}

async fn place(
    store: &EventStore,
    source: &Source,
    start: Start,
) -> Result<Placement, pg_eventstore_client::Error> {
    let head = || async { store.head_position().await };
    match source {
        Source::All => {
            let (from_position, start_from) = match start {
                Start::Beginning => (0, "C:0/P:0".to_owned()),
                Start::End => (head().await?, "C:-1/P:-1".to_owned()),
                // Inclusive: the group starts after the position before it.
                Start::At(position) => (
                    position.saturating_sub(1),
                    format!("C:{position}/P:{position}"),
                ),
            };
            Ok(Placement {
                categories: None,
                event_types: None,
                from_position,
                stream: None,
                start_from,
            })
        }
        Source::Stream(stream) => {
            let start_from = match start {
                Start::Beginning => "0".to_owned(),
                Start::End => "-1".to_owned(),
                Start::At(revision) => revision.to_string(),
            };
            let system = stream
                .strip_prefix("$ce-")
                .map(|category| (Some(vec![category.to_owned()]), None))
                .or_else(|| {
                    stream
                        .strip_prefix("$et-")
                        .map(|event_type| (None, Some(vec![event_type.to_owned()])))
                });
            if let Some((categories, event_types)) = system {
                let from_position = match start {
                    Start::Beginning | Start::At(0) => 0,
                    Start::End => head().await?,
                    Start::At(revision) => {
                        return Err(Error::InvalidArgument(format!(
                            "{stream} has no revisions here: a group on it starts at the \
                             start or the end, not at revision {revision}"
                        )))
                    }
                };
                return Ok(Placement {
                    categories,
                    event_types,
                    from_position,
                    stream: None,
                    start_from,
                });
            }
            // The log after the head holds only events appended later; a stream's events
            // from a revision on come after the one before that revision's event.
            let last = store.stream_version(stream).await?;
            let from_revision = match start {
                Start::Beginning => 0,
                Start::End => last.map_or(0, |last| last + 1),
                Start::At(revision) => revision,
            };
            let from_position = if last.is_some_and(|last| last >= from_revision) {
                let mut events = store.read_stream(
                    stream,
                    ReadStreamOptions::default()
                        .from_version(from_revision)
                        .limit(1),
                );
                match futures_util::StreamExt::next(&mut events).await {
                    Some(event) => event?.position.saturating_sub(1),
                    None => head().await?,
                }
            } else {
                head().await?
            };
            Ok(Placement {
                categories: Some(vec![category(stream).to_owned()]),
                event_types: None,
                from_position,
                stream: Some((stream.clone(), from_revision)),
                start_from,
            })
        }
    }
}

/// The category of a stream, as the store defines it (`eventstore.category`).
fn category(stream: &str) -> &str {
    stream.split('-').next().unwrap_or(stream)
}

/// A persistent subscription as stored: the table's row, the group's counts and settings.
struct Stored {
    source: Source,
    group: String,
    group_name: String,
    start_from: String,
    stream: Option<(String, u64)>,
    filter: Option<(bool, Option<String>, Vec<String>)>,
    strategy: String,
    max_subscriber_count: i32,
    resolve_links: bool,
    extra_statistics: bool,
    checkpoint_after_ms: i32,
    min_checkpoint_count: i32,
    max_checkpoint_count: i32,
    live_buffer_size: i32,
    read_batch_size: i32,
    history_buffer_size: i32,
    position: i64,
    in_flight: i64,
    parked: i64,
    lag: i64,
    max_attempts: i32,
    lease_timeout_ms: i64,
}

const STORED: &str = "SELECT p.*, g.position, g.in_flight, g.parked, g.lag, g.max_attempts, \
        (extract(epoch FROM g.lease_timeout) * 1000)::bigint AS lease_timeout_ms \
     FROM kurrentdb.persistent_subscriptions AS p \
     JOIN eventstore.groups AS g USING (group_name)";

impl Stored {
    fn from_row(row: &PgRow) -> Result<Stored, sqlx::Error> {
        let stream: Option<String> = row.try_get("stream")?;
        let from_revision: Option<i64> = row.try_get("from_revision")?;
        let filter_on: Option<String> = row.try_get("filter_on")?;
        Ok(Stored {
            source: Source::of_name(row.try_get("event_source")?),
            group: row.try_get("subscription_group")?,
            group_name: row.try_get("group_name")?,
            start_from: row.try_get("start_from")?,
            stream: stream.zip(from_revision.map(|r| u64::try_from(r).unwrap_or_default())),
            filter: match filter_on {
                Some(on) => Some((
                    on == "stream",
                    row.try_get("filter_regex")?,
                    row.try_get::<Option<Vec<String>>, _>("filter_prefixes")?
                        .unwrap_or_default(),
                )),
                None => None,
            },
            strategy: row.try_get("consumer_strategy")?,
            max_subscriber_count: row.try_get("max_subscriber_count")?,
            resolve_links: row.try_get("resolve_links")?,
            extra_statistics: row.try_get("extra_statistics")?,
            checkpoint_after_ms: row.try_get("checkpoint_after_ms")?,
            min_checkpoint_count: row.try_get("min_checkpoint_count")?,
            max_checkpoint_count: row.try_get("max_checkpoint_count")?,
            live_buffer_size: row.try_get("live_buffer_size")?,
            read_batch_size: row.try_get("read_batch_size")?,
            history_buffer_size: row.try_get("history_buffer_size")?,
            position: row.try_get("position")?,
            in_flight: row.try_get("in_flight")?,
            parked: row.try_get("parked")?,
            lag: row.try_get("lag")?,
            max_attempts: row.try_get("max_attempts")?,
            lease_timeout_ms: row.try_get("lease_timeout_ms")?,
        })
    }

    /// The events the server delivers of those the group leases.
    fn selection(&self) -> Result<Selection, Status> {
        let filter = match &self.filter {
            Some((on_stream_name, regex, prefixes)) => Some(Filter::new(
                *on_stream_name,
                regex.as_deref(),
                prefixes.clone(),
            )?),
            None => None,
        };
        Ok(Selection {
            stream: self.stream.clone(),
            filter,
        })
    }

    fn info(&self, connections: Vec<ConnectionInfo>) -> SubscriptionInfo {
        let to_i32 = |value: i64| i32::try_from(value).unwrap_or(i32::MAX);
        let in_flight: i64 = connections
            .iter()
            .map(|c| i64::from(c.in_flight_messages))
            .sum();
        let total: i64 = connections.iter().map(|c| c.total_items).sum();
        // Stream groups report revisions, which the store's group positions are not: the
        // last processed position is reported for $all groups only.
        let checkpointed = match (&self.source, self.position) {
            (Source::All, position) if position > 0 => format!("C:{position}/P:{position}"),
            _ => String::new(),
        };
        SubscriptionInfo {
            event_source: self.source.name().to_owned(),
            group_name: self.group.clone(),
            status: "Live".to_owned(),
            connections,
            average_per_second: 0,
            total_items: total,
            count_since_last_measurement: 0,
            last_checkpointed_event_position: checkpointed.clone(),
            last_known_event_position: checkpointed,
            resolve_link_tos: self.resolve_links,
            start_from: self.start_from.clone(),
            message_timeout_milliseconds: to_i32(self.lease_timeout_ms),
            extra_statistics: self.extra_statistics,
            max_retry_count: self.max_attempts.saturating_sub(1),
            live_buffer_size: self.live_buffer_size,
            buffer_size: self.history_buffer_size,
            read_batch_size: self.read_batch_size,
            check_point_after_milliseconds: self.checkpoint_after_ms,
            min_check_point_count: self.min_checkpoint_count,
            max_check_point_count: self.max_checkpoint_count,
            read_buffer_count: 0,
            live_buffer_count: self.lag,
            retry_buffer_count: 0,
            total_in_flight_messages: to_i32(self.in_flight.max(in_flight)),
            outstanding_messages_count: to_i32(self.in_flight),
            named_consumer_strategy: self.strategy.clone(),
            max_subscriber_count: self.max_subscriber_count,
            parked_message_count: self.parked,
        }
    }
}

/// The persistent subscription `group` of `source`; NOT_FOUND when there is none.
async fn load(store: &EventStore, source: &Source, group: &str) -> Result<Stored, Status> {
    let row = sqlx::query(&format!(
        "{STORED} WHERE p.event_source = $1 AND p.subscription_group = $2"
    ))
    .bind(source.name())
    .bind(group)
    .fetch_optional(store.pool())
    .await
    .map_err(|e| store_error(source, group, e.into()))?;
    let row = row.ok_or_else(|| not_found(source, group))?;
    Stored::from_row(&row).map_err(|e| status::store(e.into()))
}

/// The events a connection delivers of those its group leases to it.
struct Selection {
    stream: Option<(String, u64)>,
    filter: Option<Filter>,
}

impl Selection {
    fn delivers(&self, event: &RecordedEvent) -> bool {
        let in_stream = self
            .stream
            .as_ref()
            .is_none_or(|(stream, from)| event.stream == *stream && event.version >= *from);
        in_stream && self.filter.as_ref().is_none_or(|f| f.matches(event))
    }
}

/// A connection of a group, as GetInfo reports it.
struct Connection {
    from: String,
    name: String,
    buffer: u32,
    in_flight: AtomicU64,
    delivered: AtomicU64,
}

/// The connections of every group this server serves, by store group.
#[derive(Default)]
struct Registry(Mutex<HashMap<String, HashMap<Uuid, Arc<Connection>>>>);

/// A connection's place in the [`Registry`], given up when dropped.
struct Registration {
    registry: Arc<Registry>,
    group_name: String,
    id: Uuid,
    connection: Arc<Connection>,
}

impl Registry {
    fn join(
        self: &Arc<Self>,
        stored: &Stored,
        connection: Connection,
    ) -> Result<Registration, Status> {
        let mut groups = self.0.lock().expect("the registry lock is never poisoned");
        let connections = groups.entry(stored.group_name.clone()).or_default();
        let limit = usize::try_from(stored.max_subscriber_count).unwrap_or(0);
        if limit > 0 && connections.len() >= limit {
            return Err(group_status(
                Code::FailedPrecondition,
                "maximum-subscribers-reached",
                &stored.source,
                &stored.group,
                &format!("has its maximum of {limit} subscribers"),
            ));
        }
        let id = Uuid::new_v4();
        let connection = Arc::new(connection);
        connections.insert(id, connection.clone());
        Ok(Registration {
            registry: self.clone(),
            group_name: stored.group_name.clone(),
            id,
            connection,
        })
    }

    fn connections(&self, group_name: &str) -> Vec<ConnectionInfo> {
        let groups = self.0.lock().expect("the registry lock is never poisoned");
        let mut connections: Vec<ConnectionInfo> = groups
            .get(group_name)
            .into_iter()
            .flat_map(HashMap::values)
            .map(|c| {
                let in_flight = c.in_flight.load(Ordering::Relaxed);
                ConnectionInfo {
                    from: c.from.clone(),
                    username: String::new(),
                    average_items_per_second: 0,
                    total_items: i64::try_from(c.delivered.load(Ordering::Relaxed))
                        .unwrap_or(i64::MAX),
                    count_since_last_measurement: 0,
                    observed_measurements: Vec::new(),
                    available_slots: i32::try_from(u64::from(c.buffer).saturating_sub(in_flight))
                        .unwrap_or(0),
                    in_flight_messages: i32::try_from(in_flight).unwrap_or(i32::MAX),
                    connection_name: c.name.clone(),
                }
            })
            .collect();
        connections.sort_by(|a, b| a.from.cmp(&b.from));
        connections
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut groups = self
            .registry
            .0
            .lock()
            .expect("the registry lock is never poisoned");
        if let Some(connections) = groups.get_mut(&self.group_name) {
            connections.remove(&self.id);
            if connections.is_empty() {
                groups.remove(&self.group_name);
            }
        }
    }
}

pub struct Service {
    callers: Arc<Callers>,
    stopped: watch::Receiver<bool>,
    /// Counts RestartSubsystem calls: each drops every connection.
    restarts: watch::Sender<u64>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
}

impl Service {
    pub fn new(
        callers: Arc<Callers>,
        stopped: watch::Receiver<bool>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Service {
            callers,
            stopped,
            restarts: watch::channel(0).0,
            registry: Arc::default(),
            metrics,
        }
    }
}

type Sender = mpsc::Sender<Result<ReadResp, Status>>;

#[tonic::async_trait]
impl PersistentSubscriptions for Service {
    async fn create(&self, request: Request<CreateReq>) -> Result<Response<CreateResp>, Status> {
        let store = self.callers.store(request.metadata()).await?;
        let Creation {
            source,
            group,
            start,
            filter,
            options,
        } = Creation::parse(request.into_inner())?;
        let group_name = source.group_name(&group);
        if group_name.len() > 200 {
            return Err(invalid(format!(
                "a stream and group name take at most 200 bytes together, got {}",
                group_name.len()
            )));
        }
        let placement = place(&store, &source, start)
            .await
            .map_err(|e| store_error(&source, &group, e))?;
        let fail = |e: sqlx::Error| store_error(&source, &group, e.into());
        // A unique violation, of the store's group name or of the table's (stream, group),
        // is a group that exists already.
        let conflict = |e: sqlx::Error| match Error::from(e) {
            error if error.sqlstate().as_deref() == Some("23505") => exists(&source, &group),
            error => store_error(&source, &group, error),
        };
        let mut tx = store.pool().begin().await.map_err(fail)?;
        sqlx::query("SELECT eventstore.create_group($1, $2, $3, $4, $5, $6, $7)")
            .bind(&group_name)
            .bind(&placement.categories)
            .bind(&placement.event_types)
            .bind(i64::try_from(placement.from_position).unwrap_or(i64::MAX))
            .bind(options.max_attempts())
            .bind(options.lease_timeout())
            .bind(options.ordered_by_stream())
            .execute(&mut *tx)
            .await
            .map_err(conflict)?;
        let (stream, from_revision) = placement.stream.unzip();
        sqlx::query(
            "INSERT INTO kurrentdb.persistent_subscriptions \
               (group_name, event_source, subscription_group, start_from, stream, from_revision, \
                filter_on, filter_regex, filter_prefixes, consumer_strategy, \
                max_subscriber_count, resolve_links, extra_statistics, checkpoint_after_ms, \
                min_checkpoint_count, max_checkpoint_count, live_buffer_size, read_batch_size, \
                history_buffer_size) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, \
                     $17, $18, $19)",
        )
        .bind(&group_name)
        .bind(source.name())
        .bind(&group)
        .bind(&placement.start_from)
        .bind(stream)
        .bind(from_revision.map(|r| i64::try_from(r).unwrap_or(i64::MAX)))
        .bind(filter.as_ref().map(|f| {
            if f.on_stream_name {
                "stream"
            } else {
                "event_type"
            }
        }))
        .bind(
            filter
                .as_ref()
                .and_then(|f| f.regex.as_ref().map(|r| r.as_str().to_owned())),
        )
        .bind(filter.as_ref().map(|f| f.prefixes.clone()))
        .bind(&options.strategy)
        .bind(options.max_subscriber_count)
        .bind(options.resolve_links)
        .bind(options.extra_statistics)
        .bind(options.checkpoint_after_ms)
        .bind(options.min_checkpoint_count)
        .bind(options.max_checkpoint_count)
        .bind(options.live_buffer_size)
        .bind(options.read_batch_size)
        .bind(options.history_buffer_size)
        .execute(&mut *tx)
        .await
        .map_err(conflict)?;
        tx.commit().await.map_err(fail)?;
        tracing::info!(stream = source.name(), %group, "persistent subscription created");
        Ok(Response::new(CreateResp {}))
    }

    async fn update(&self, request: Request<UpdateReq>) -> Result<Response<UpdateResp>, Status> {
        let store = self.callers.store(request.metadata()).await?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| invalid("an update request needs its options"))?;
        let group = group_name(options.group_name)?;
        let source = match options.stream_option {
            Some(update_req::options::StreamOption::Stream(stream)) => {
                Source::of_identifier(stream.stream_identifier.as_ref())?
            }
            Some(update_req::options::StreamOption::All(_)) => Source::All,
            None => Source::of_identifier(options.stream_identifier.as_ref())?,
        };
        let settings = GroupOptions::parse(options.settings, false)?;
        let fail = |e: sqlx::Error| store_error(&source, &group, e.into());
        let mut tx = store.pool().begin().await.map_err(fail)?;
        // The start stays where the group is: an update changes how it delivers, not what
        // it has done.
        let group_name: Option<String> = sqlx::query_scalar(
            "UPDATE kurrentdb.persistent_subscriptions \
             SET consumer_strategy = $3, max_subscriber_count = $4, resolve_links = $5, \
                 extra_statistics = $6, checkpoint_after_ms = $7, min_checkpoint_count = $8, \
                 max_checkpoint_count = $9, live_buffer_size = $10, read_batch_size = $11, \
                 history_buffer_size = $12 \
             WHERE event_source = $1 AND subscription_group = $2 \
             RETURNING group_name",
        )
        .bind(source.name())
        .bind(&group)
        .bind(&settings.strategy)
        .bind(settings.max_subscriber_count)
        .bind(settings.resolve_links)
        .bind(settings.extra_statistics)
        .bind(settings.checkpoint_after_ms)
        .bind(settings.min_checkpoint_count)
        .bind(settings.max_checkpoint_count)
        .bind(settings.live_buffer_size)
        .bind(settings.read_batch_size)
        .bind(settings.history_buffer_size)
        .fetch_optional(&mut *tx)
        .await
        .map_err(fail)?;
        let Some(group_name) = group_name else {
            return Err(not_found(&source, &group));
        };
        sqlx::query(
            "SELECT eventstore.alter_group($1, max_attempts => $2, lease_timeout => $3, \
                                           ordered_by_stream => $4)",
        )
        .bind(&group_name)
        .bind(settings.max_attempts())
        .bind(settings.lease_timeout())
        .bind(settings.ordered_by_stream())
        .execute(&mut *tx)
        .await
        .map_err(fail)?;
        tx.commit().await.map_err(fail)?;
        Ok(Response::new(UpdateResp {}))
    }

    async fn delete(&self, request: Request<DeleteReq>) -> Result<Response<DeleteResp>, Status> {
        let store = self.callers.store(request.metadata()).await?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| invalid("a delete request needs its options"))?;
        let group = group_name(options.group_name)?;
        let source = Source::named(
            options.stream_option.map(|option| match option {
                delete_req::options::StreamOption::StreamIdentifier(identifier) => Some(identifier),
                delete_req::options::StreamOption::All(Empty {}) => None,
            }),
            "delete request",
        )?;
        let fail = |e: sqlx::Error| store_error(&source, &group, e.into());
        let mut tx = store.pool().begin().await.map_err(fail)?;
        let group_name: Option<String> = sqlx::query_scalar(
            "DELETE FROM kurrentdb.persistent_subscriptions \
             WHERE event_source = $1 AND subscription_group = $2 RETURNING group_name",
        )
        .bind(source.name())
        .bind(&group)
        .fetch_optional(&mut *tx)
        .await
        .map_err(fail)?;
        let Some(group_name) = group_name else {
            return Err(not_found(&source, &group));
        };
        sqlx::query("SELECT eventstore.delete_group($1)")
            .bind(&group_name)
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
        tx.commit().await.map_err(fail)?;
        tracing::info!(stream = source.name(), %group, "persistent subscription deleted");
        Ok(Response::new(DeleteResp {}))
    }

    type ReadStream = Pin<Box<dyn Stream<Item = Result<ReadResp, Status>> + Send>>;

    async fn read(
        &self,
        request: Request<Streaming<ReadReq>>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let store = self.callers.store(request.metadata()).await?;
        let from = request
            .remote_addr()
            .map_or_else(String::new, |addr: SocketAddr| addr.to_string());
        let name = request
            .metadata()
            .get("connection-name")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let mut incoming = request.into_inner();
        let options = match incoming.message().await?.and_then(|m| m.content) {
            Some(ReadContent::Options(options)) => options,
            _ => {
                return Err(invalid(
                    "a persistent subscription read starts with its options",
                ))
            }
        };
        let group = group_name(options.group_name)?;
        let source = Source::named(
            options.stream_option.map(|option| match option {
                read_req::options::StreamOption::StreamIdentifier(identifier) => Some(identifier),
                read_req::options::StreamOption::All(Empty {}) => None,
            }),
            "persistent subscription read",
        )?;
        let structured = match options.uuid_option.and_then(|option| option.content) {
            Some(uuid_option::Content::Structured(Empty {})) => true,
            Some(uuid_option::Content::String(Empty {})) | None => false,
        };
        let buffer = match u32::try_from(options.buffer_size) {
            Ok(0) => DEFAULT_BUFFER,
            Ok(size) => size.min(MAX_BUFFER),
            Err(_) => return Err(invalid("the buffer size must not be negative")),
        };
        let stored = load(&store, &source, &group).await?;
        let selection = stored.selection()?;
        let registration = self.registry.join(
            &stored,
            Connection {
                from,
                name,
                buffer,
                in_flight: AtomicU64::new(0),
                delivered: AtomicU64::new(0),
            },
        )?;
        let (tx, rx) = mpsc::channel(usize::try_from(buffer).unwrap_or(64).clamp(2, 64));
        let consumer = Consumer {
            store,
            source,
            group,
            consumer: format!("kurrentdb-{}", registration.id.simple()),
            registration,
            selection,
            structured,
            buffer,
            lease_timeout: Duration::from_millis(
                u64::try_from(stored.lease_timeout_ms).unwrap_or(1),
            ),
            in_flight: HashMap::new(),
        };
        let stopped = self.stopped.clone();
        let restarts = self.restarts.subscribe();
        tokio::spawn(consumer.run(incoming, tx, stopped, restarts));
        Ok(Response::new(self.metrics.counted(rx, |message| {
            matches!(message.content, Some(Content::Event(_)))
        })))
    }

    async fn get_info(
        &self,
        request: Request<GetInfoReq>,
    ) -> Result<Response<GetInfoResp>, Status> {
        let store = self.callers.store(request.metadata()).await?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| invalid("a get-info request needs its options"))?;
        let group = group_name(options.group_name)?;
        let source = Source::named(
            options.stream_option.map(|option| match option {
                get_info_req::options::StreamOption::StreamIdentifier(identifier) => {
                    Some(identifier)
                }
                get_info_req::options::StreamOption::All(Empty {}) => None,
            }),
            "get-info request",
        )?;
        let stored = load(&store, &source, &group).await?;
        let connections = self.registry.connections(&stored.group_name);
        Ok(Response::new(GetInfoResp {
            subscription_info: Some(stored.info(connections)),
        }))
    }

    async fn replay_parked(
        &self,
        request: Request<ReplayParkedReq>,
    ) -> Result<Response<ReplayParkedResp>, Status> {
        let store = self.callers.store(request.metadata()).await?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| invalid("a replay-parked request needs its options"))?;
        let group = group_name(options.group_name)?;
        let source = Source::named(
            options.stream_option.map(|option| match option {
                replay_parked_req::options::StreamOption::StreamIdentifier(identifier) => {
                    Some(identifier)
                }
                replay_parked_req::options::StreamOption::All(Empty {}) => None,
            }),
            "replay-parked request",
        )?;
        let stop_at = match options.stop_at_option {
            Some(replay_parked_req::options::StopAtOption::StopAt(stop_at)) => Some(
                usize::try_from(stop_at).map_err(|_| invalid("stop_at must not be negative"))?,
            ),
            Some(replay_parked_req::options::StopAtOption::NoLimit(Empty {})) | None => None,
        };
        let stored = load(&store, &source, &group).await?;
        let fail = |e| store_error(&source, &group, e);
        // With a limit, the first `stop_at` parked events, in position order.
        let positions: Option<Vec<u64>> = match stop_at {
            None => None,
            Some(stop_at) => Some(
                store
                    .parked(&stored.group_name)
                    .await
                    .map_err(fail)?
                    .iter()
                    .take(stop_at)
                    .map(|parked| parked.event.position)
                    .collect(),
            ),
        };
        store
            .replay_parked(&stored.group_name, positions.as_deref())
            .await
            .map_err(fail)?;
        Ok(Response::new(ReplayParkedResp {}))
    }

    async fn list(&self, request: Request<ListReq>) -> Result<Response<ListResp>, Status> {
        let store = self.callers.store(request.metadata()).await?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| invalid("a list request needs its options"))?;
        let source = match options.list_option {
            Some(list_req::options::ListOption::ListAllSubscriptions(Empty {})) | None => None,
            Some(list_req::options::ListOption::ListForStream(stream)) => {
                match stream.stream_option {
                    Some(list_req::stream_option::StreamOption::Stream(identifier)) => {
                        Some(Source::of_identifier(Some(&identifier))?)
                    }
                    Some(list_req::stream_option::StreamOption::All(Empty {})) => Some(Source::All),
                    None => return Err(invalid("a list request for a stream names it")),
                }
            }
        };
        let rows = sqlx::query(&format!(
            "{STORED} WHERE $1::text IS NULL OR p.event_source = $1 \
             ORDER BY p.event_source, p.subscription_group"
        ))
        .bind(source.as_ref().map(Source::name))
        .fetch_all(store.pool())
        .await
        .map_err(|e| store_error(source.as_ref().unwrap_or(&Source::All), "", e.into()))?;
        if rows.is_empty() {
            if let Some(source) = &source {
                return Err(not_found(source, ""));
            }
        }
        let mut subscriptions = Vec::with_capacity(rows.len());
        for row in &rows {
            let stored = Stored::from_row(row).map_err(|e| status::store(e.into()))?;
            let connections = self.registry.connections(&stored.group_name);
            subscriptions.push(stored.info(connections));
        }
        Ok(Response::new(ListResp { subscriptions }))
    }

    async fn restart_subsystem(&self, _request: Request<Empty>) -> Result<Response<Empty>, Status> {
        self.restarts.send_modify(|restarts| *restarts += 1);
        tracing::info!("persistent subscriptions restarted: every connection was dropped");
        Ok(Response::new(Empty {}))
    }
}

/// One Read call: a consumer of the store's group.
struct Consumer {
    store: EventStore,
    source: Source,
    group: String,
    consumer: String,
    registration: Registration,
    selection: Selection,
    structured: bool,
    buffer: u32,
    lease_timeout: Duration,
    /// The events sent and not settled yet, by id: their position and when their lease ends
    /// (the store then gives them to whoever fetches next).
    in_flight: HashMap<Uuid, (u64, Instant)>,
}

/// What ended a connection's loop.
enum End {
    /// The client hung up or cancelled.
    Client,
    /// The connection is to end with this status.
    Status(Status),
}

impl Consumer {
    async fn run(
        mut self,
        mut incoming: Streaming<ReadReq>,
        tx: Sender,
        mut stopped: watch::Receiver<bool>,
        mut restarts: watch::Receiver<u64>,
    ) {
        restarts.borrow_and_update();
        let confirmation = Content::SubscriptionConfirmation(read_resp::SubscriptionConfirmation {
            subscription_id: self.registration.group_name.clone(),
        });
        let end = if send(&tx, confirmation).await {
            let mut wake_ups = self.store.wake_ups();
            loop {
                self.forget_expired();
                if self.room() > 0 {
                    match self.deliver(&tx).await {
                        // More may be waiting: fetch again at once.
                        Ok(true) => continue,
                        Ok(false) => {}
                        Err(end) => break end,
                    }
                }
                // Nothing to fetch, or no room: wait for an ack or nack (room, or events
                // back in the group), new events, a lease running out, or the end.
                let stop = async {
                    let _ = stopped.wait_for(|stopped| *stopped).await;
                };
                tokio::select! {
                    message = incoming.message() => match message {
                        Ok(Some(message)) => {
                            if let Err(end) = self.settle(message).await {
                                break end;
                            }
                        }
                        Ok(None) | Err(_) => break End::Client,
                    },
                    _ = wake_ups.wait(POLL) => {}
                    () = tx.closed() => break End::Client,
                    () = stop => {
                        break End::Status(Status::unavailable("the server is shutting down"));
                    }
                    _ = restarts.changed() => {
                        break End::Status(dropped(
                            &self.source,
                            &self.group,
                            "the persistent subscriptions were restarted",
                        ));
                    }
                }
            }
        } else {
            End::Client
        };
        self.release().await;
        if let End::Status(status) = end {
            let _ = tx.send(Err(status)).await;
        }
    }

    fn room(&self) -> u32 {
        self.buffer
            .saturating_sub(u32::try_from(self.in_flight.len()).unwrap_or(u32::MAX))
    }

    /// Fetches as many events as the client has room for and sends those it gets; `false`
    /// when the group had nothing to give.
    async fn deliver(&mut self, tx: &Sender) -> Result<bool, End> {
        let group_name = &self.registration.group_name;
        let batch = self
            .store
            .fetch(group_name, &self.consumer, self.room())
            .await
            .map_err(|e| End::Status(store_error(&self.source, &self.group, e)))?;
        if batch.is_empty() {
            return Ok(false);
        }
        let deadline = Instant::now() + self.lease_timeout;
        let mut unseen = Vec::new();
        for GroupEvent { event, attempt } in batch {
            if !self.selection.delivers(&event) {
                unseen.push(event.position);
                continue;
            }
            self.in_flight.insert(event.id, (event.position, deadline));
            let message = Content::Event(read_resp::ReadEvent {
                event: Some(codec::wire_event(&event, self.structured)),
                link: None,
                position: Some(read_event::Position::CommitPosition(event.position)),
                count: Some(read_event::Count::RetryCount(
                    i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX),
                )),
            });
            if !send(tx, message).await {
                return Err(End::Client);
            }
            self.registration
                .connection
                .delivered
                .fetch_add(1, Ordering::Relaxed);
        }
        self.count_in_flight();
        if !unseen.is_empty() {
            self.store
                .ack(group_name, &self.consumer, &unseen)
                .await
                .map_err(|e| End::Status(store_error(&self.source, &self.group, e)))?;
        }
        Ok(true)
    }

    /// Settles what an ack or nack names.
    async fn settle(&mut self, message: ReadReq) -> Result<(), End> {
        let (ids, action, reason) = match message.content {
            Some(ReadContent::Ack(ack)) => (ack.ids, None, String::new()),
            Some(ReadContent::Nack(nack)) => {
                let action = Action::try_from(nack.action).unwrap_or(Action::Unknown);
                (nack.ids, Some(action), nack.reason)
            }
            Some(ReadContent::Options(_)) | None => {
                return Err(End::Status(invalid(
                    "after its options a persistent subscription read carries acks and nacks",
                )))
            }
        };
        let mut positions = Vec::with_capacity(ids.len());
        for id in &ids {
            let id = codec::uuid_of(id).map_err(|e| End::Status(status::codec(e)))?;
            // An id not in flight here (settled already, or its lease ran out and it went
            // out again) settles nothing, as with EventStoreDB.
            if let Some((position, _)) = self.in_flight.remove(&id) {
                positions.push(position);
            }
        }
        self.count_in_flight();
        if positions.is_empty() {
            return Ok(());
        }
        let group_name = &self.registration.group_name;
        let reason = if reason.is_empty() {
            "nacked by the client"
        } else {
            reason.as_str()
        };
        let result = match action {
            None | Some(Action::Skip) => {
                self.store.ack(group_name, &self.consumer, &positions).await
            }
            Some(Action::Park) => {
                self.store
                    .park(group_name, &self.consumer, &positions, reason)
                    .await
            }
            Some(Action::Retry | Action::Unknown) => {
                self.store
                    .nack(
                        group_name,
                        &self.consumer,
                        &positions,
                        Duration::ZERO,
                        reason,
                    )
                    .await
            }
            // Stop: the events stay leased until their lease runs out, then go out again.
            Some(Action::Stop) => Ok(0),
        };
        result
            .map(|_| ())
            .map_err(|e| End::Status(store_error(&self.source, &self.group, e)))
    }

    /// Drops the events whose lease ran out: the store hands them out again.
    fn forget_expired(&mut self) {
        let now = Instant::now();
        self.in_flight.retain(|_, (_, deadline)| *deadline > now);
        self.count_in_flight();
    }

    fn count_in_flight(&self) {
        self.registration
            .connection
            .in_flight
            .store(self.in_flight.len() as u64, Ordering::Relaxed);
    }

    /// Gives the events still in flight back to the group at once, for its other consumers
    /// (or the next connection), rather than after their lease.
    async fn release(&mut self) {
        if self.in_flight.is_empty() {
            return;
        }
        let positions: Vec<u64> = self.in_flight.drain().map(|(_, (p, _))| p).collect();
        if let Err(error) = self
            .store
            .nack(
                &self.registration.group_name,
                &self.consumer,
                &positions,
                Duration::ZERO,
                "the subscriber disconnected",
            )
            .await
        {
            tracing::warn!(%error, group = %self.registration.group_name,
                "could not give back a closed connection's events; they go out again when \
                 their lease runs out");
        }
    }
}

/// Sends `content`; `false` once the client has gone.
async fn send(tx: &Sender, content: Content) -> bool {
    tx.send(Ok(ReadResp {
        content: Some(content),
    }))
    .await
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strategy(named: ConsumerStrategy, text: &str) -> Result<GroupOptions, Status> {
        GroupOptions::parse(
            Some(Settings {
                named_consumer_strategy: named as i32,
                consumer_strategy: text.to_owned(),
                ..Settings::default()
            }),
            true,
        )
    }

    #[test]
    fn pinned_is_ordered_by_stream_and_the_others_are_not() {
        let pinned = strategy(ConsumerStrategy::Pinned, "").unwrap();
        assert_eq!(pinned.strategy, "Pinned");
        assert!(pinned.ordered_by_stream());
        for (named, text) in [
            (ConsumerStrategy::RoundRobin, ""),
            (ConsumerStrategy::DispatchToSingle, ""),
            // The text wins over the enum on create.
            (ConsumerStrategy::Pinned, "RoundRobin"),
        ] {
            let options = strategy(named, text).unwrap();
            assert!(!options.ordered_by_stream(), "{}", options.strategy);
        }
    }

    #[test]
    fn strategies_without_an_equivalent_are_refused() {
        for text in ["PinnedByCorrelation", "Fastest"] {
            let refused = strategy(ConsumerStrategy::RoundRobin, text)
                .err()
                .unwrap_or_else(|| panic!("{text} was accepted"));
            assert_eq!(refused.code(), Code::InvalidArgument, "{text}");
            assert!(refused.message().contains(text), "{}", refused.message());
        }
        let unknown = GroupOptions::parse(
            Some(Settings {
                named_consumer_strategy: 7,
                ..Settings::default()
            }),
            false,
        );
        assert_eq!(unknown.err().map(|e| e.code()), Some(Code::InvalidArgument));
    }

    #[test]
    fn settings_map_onto_the_group_and_bad_ones_are_refused() {
        let options = GroupOptions::parse(
            Some(Settings {
                message_timeout: Some(MessageTimeout::MessageTimeoutTicks(25_000_000)),
                max_retry_count: 3,
                ..Settings::default()
            }),
            true,
        )
        .unwrap();
        assert_eq!(options.lease_timeout(), Duration::from_millis(2_500));
        assert_eq!(options.max_attempts(), 4);
        for bad in [
            Settings {
                max_retry_count: -1,
                ..Settings::default()
            },
            Settings {
                message_timeout: Some(MessageTimeout::MessageTimeoutMs(0)),
                ..Settings::default()
            },
            Settings {
                max_subscriber_count: -2,
                ..Settings::default()
            },
        ] {
            let refused = GroupOptions::parse(Some(bad), true).err();
            assert_eq!(refused.map(|e| e.code()), Some(Code::InvalidArgument));
        }
    }
}
