//! The Streams service: Append, Read (bounded and as a subscription), and Delete and
//! Tombstone, which the store does not offer.

use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use futures_util::{Stream, StreamExt};
use pg_eventstore_client::{
    EventData, EventStore, ExpectedVersion, ReadAllOptions, ReadStreamOptions, RecordedEvent,
    SubscriptionOptions,
};
use regex::Regex;
use tokio::sync::{mpsc, watch};
use tonic::{Code, Request, Response, Status, Streaming};

use crate::callers::Callers;
use crate::codec;
use crate::proto::shared::Empty;
use crate::proto::streams::append_req::options::ExpectedStreamRevision;
use crate::proto::streams::append_req::Content as AppendContent;
use crate::proto::streams::append_resp::{self, Result as AppendResult, Success};
use crate::proto::streams::read_req::options::filter_options::{
    Expression, Filter as WireFilter, Window,
};
use crate::proto::streams::read_req::options::{
    all_options::AllOption, stream_options::RevisionOption, uuid_option, CountOption, FilterOption,
    ReadDirection, StreamOption,
};
use crate::proto::streams::read_resp::{self, read_event, Content, ReadEvent};
use crate::proto::streams::streams_server::Streams;
use crate::proto::streams::{
    AppendReq, AppendResp, DeleteReq, DeleteResp, ReadReq, ReadResp, TombstoneReq, TombstoneResp,
};
use crate::status::{self, invalid, with_trailers};
use crate::web::metrics::Metrics;

/// The largest append, in bytes of data and custom metadata (EventStoreDB's default).
pub const MAX_APPEND_SIZE: usize = 16 * 1024 * 1024;

/// Messages a read may have ready before the client takes them. A slow client holds the
/// read here (HTTP/2 flow control fills, then this channel), not in memory.
const BUFFER: usize = 64;

/// The largest page asked of the store at once.
const PAGE: u64 = 2_000;

/// The end marker of revisions and positions.
const END: u64 = u64::MAX;

/// The checkpoint window a filter without `max` gets, as EventStoreDB's.
const DEFAULT_WINDOW: u32 = 32;

pub struct Service {
    callers: Arc<Callers>,
    stopped: watch::Receiver<bool>,
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
            metrics,
        }
    }
}

type Sender = mpsc::Sender<Result<ReadResp, Status>>;

#[tonic::async_trait]
impl Streams for Service {
    type ReadStream = Pin<Box<dyn Stream<Item = Result<ReadResp, Status>> + Send>>;

    async fn read(&self, request: Request<ReadReq>) -> Result<Response<Self::ReadStream>, Status> {
        let store = self.callers.store(request.metadata()).await?;
        let options = request
            .into_inner()
            .options
            .ok_or_else(|| invalid("a read needs its options"))?;
        let read = Read::parse(options)?;
        let (tx, rx) = mpsc::channel(BUFFER);
        let mut stopped = self.stopped.clone();
        tokio::spawn(async move {
            let subscription = read.is_subscription();
            let result = tokio::select! {
                result = read.run(&store, &tx) => result,
                // The client went away: stop reading for it.
                () = tx.closed() => Ok(()),
                // Bounded reads finish; subscriptions end when the server stops.
                _ = stopped.wait_for(|stopped| *stopped), if subscription => {
                    Err(Status::unavailable("the server is shutting down"))
                }
            };
            if let Err(status) = result {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(self.metrics.counted(rx, |message| {
            matches!(message.content, Some(Content::Event(_)))
        })))
    }

    async fn append(
        &self,
        request: Request<Streaming<AppendReq>>,
    ) -> Result<Response<AppendResp>, Status> {
        let store = self.callers.store(request.metadata()).await?;
        let mut messages = request.into_inner();
        let options = match messages.message().await?.and_then(|m| m.content) {
            Some(AppendContent::Options(options)) => options,
            _ => return Err(invalid("an append starts with its options")),
        };
        let stream =
            codec::stream_name(options.stream_identifier.as_ref()).map_err(status::codec)?;
        let expected = match options.expected_stream_revision {
            Some(ExpectedStreamRevision::Revision(revision)) => ExpectedVersion::Exact(revision),
            Some(ExpectedStreamRevision::NoStream(Empty {})) => ExpectedVersion::NoStream,
            Some(ExpectedStreamRevision::StreamExists(Empty {})) => ExpectedVersion::StreamExists,
            Some(ExpectedStreamRevision::Any(Empty {})) | None => ExpectedVersion::Any,
        };
        let mut events: Vec<EventData> = Vec::new();
        let mut size = 0_usize;
        while let Some(message) = messages.message().await? {
            let Some(AppendContent::ProposedMessage(proposed)) = message.content else {
                return Err(invalid("after its options an append carries only events"));
            };
            size += proposed.data.len() + proposed.custom_metadata.len();
            if size > MAX_APPEND_SIZE {
                return Err(with_trailers(
                    Code::InvalidArgument,
                    format!("the append is larger than {MAX_APPEND_SIZE} bytes"),
                    &[
                        ("exception", "maximum-append-size-exceeded"),
                        ("maximum-append-size", &MAX_APPEND_SIZE.to_string()),
                    ],
                ));
            }
            let event = codec::event_data(
                events.len(),
                proposed.id.as_ref(),
                &proposed.metadata,
                &proposed.custom_metadata,
                proposed.data,
            )
            .map_err(status::codec)?;
            events.push(event);
        }
        let result = if events.is_empty() {
            empty_append(&store, &stream, expected).await?
        } else {
            match store.append(&stream, expected, events).await {
                Ok(appended) => AppendResult::Success(Success {
                    current_revision_option: Some(
                        append_resp::success::CurrentRevisionOption::CurrentRevision(
                            appended.last_version,
                        ),
                    ),
                    position_option: Some(append_resp::success::PositionOption::Position(
                        append_resp::Position {
                            commit_position: appended.last_position,
                            prepare_position: appended.last_position,
                        },
                    )),
                }),
                Err(pg_eventstore_client::Error::WrongExpectedVersion { actual, .. }) => {
                    wrong_expected_version(expected, actual)
                }
                Err(error) => return Err(status::store(error)),
            }
        };
        Ok(Response::new(AppendResp {
            result: Some(result),
        }))
    }

    async fn delete(&self, _request: Request<DeleteReq>) -> Result<Response<DeleteResp>, Status> {
        Err(no_deletion())
    }

    async fn tombstone(
        &self,
        _request: Request<TombstoneReq>,
    ) -> Result<Response<TombstoneResp>, Status> {
        Err(no_deletion())
    }
}

fn no_deletion() -> Status {
    Status::unimplemented(
        "pg_eventstore keeps every event: streams cannot be deleted or tombstoned",
    )
}

/// An append of no events writes nothing; it still checks the expected version.
async fn empty_append(
    store: &EventStore,
    stream: &str,
    expected: ExpectedVersion,
) -> Result<AppendResult, Status> {
    let actual = store.stream_version(stream).await.map_err(status::store)?;
    let met = match expected {
        ExpectedVersion::Any => true,
        ExpectedVersion::NoStream => actual.is_none(),
        ExpectedVersion::StreamExists => actual.is_some(),
        ExpectedVersion::Exact(version) => actual == Some(version),
    };
    if !met {
        return Ok(wrong_expected_version(expected, actual));
    }
    use append_resp::success::{CurrentRevisionOption, PositionOption};
    Ok(AppendResult::Success(Success {
        current_revision_option: Some(match actual {
            Some(version) => CurrentRevisionOption::CurrentRevision(version),
            None => CurrentRevisionOption::NoStream(Empty {}),
        }),
        position_option: Some(PositionOption::NoPosition(Empty {})),
    }))
}

/// The answer to an append whose expected version was not met: status OK, both the current
/// fields and the legacy ones filled, as clients of every age read one or the other.
fn wrong_expected_version(expected: ExpectedVersion, actual: Option<u64>) -> AppendResult {
    use append_resp::wrong_expected_version::{
        CurrentRevisionOption, CurrentRevisionOption2060, ExpectedRevisionOption,
        ExpectedRevisionOption2060,
    };
    let (current, current_legacy) = match actual {
        Some(version) => (
            CurrentRevisionOption::CurrentRevision(version),
            CurrentRevisionOption2060::CurrentRevision2060(version),
        ),
        None => (
            CurrentRevisionOption::CurrentNoStream(Empty {}),
            CurrentRevisionOption2060::NoStream2060(Empty {}),
        ),
    };
    let (expected_now, expected_legacy) = match expected {
        ExpectedVersion::Exact(version) => (
            ExpectedRevisionOption::ExpectedRevision(version),
            ExpectedRevisionOption2060::ExpectedRevision2060(version),
        ),
        ExpectedVersion::NoStream => (
            ExpectedRevisionOption::ExpectedNoStream(Empty {}),
            ExpectedRevisionOption2060::ExpectedRevision2060(END),
        ),
        ExpectedVersion::StreamExists => (
            ExpectedRevisionOption::ExpectedStreamExists(Empty {}),
            ExpectedRevisionOption2060::StreamExists2060(Empty {}),
        ),
        ExpectedVersion::Any => (
            ExpectedRevisionOption::ExpectedAny(Empty {}),
            ExpectedRevisionOption2060::Any2060(Empty {}),
        ),
    };
    AppendResult::WrongExpectedVersion(append_resp::WrongExpectedVersion {
        current_revision_option_20_6_0: Some(current_legacy),
        expected_revision_option_20_6_0: Some(expected_legacy),
        current_revision_option: Some(current),
        expected_revision_option: Some(expected_now),
    })
}

/// Where a read or subscription starts: a stream revision for streams, a commit position for
/// `$all`.
#[derive(Clone, Copy, Debug)]
enum Origin {
    Start,
    End,
    At(u64),
}

/// What events a filter lets through: those whose stream name (or event type) matches the
/// regular expression, or starts with one of the prefixes.
pub(crate) struct Filter {
    pub(crate) on_stream_name: bool,
    pub(crate) regex: Option<Regex>,
    pub(crate) prefixes: Vec<String>,
    /// Events considered between two checkpoints.
    checkpoint_interval: u64,
}

impl Filter {
    /// A filter as [`Filter::parse`] made it, from its parts.
    pub(crate) fn new(
        on_stream_name: bool,
        regex: Option<&str>,
        prefixes: Vec<String>,
    ) -> Result<Self, Status> {
        let regex = regex
            .filter(|regex| !regex.is_empty())
            .map(|regex| {
                Regex::new(regex).map_err(|error| {
                    invalid(format!(
                        "the filter's regular expression {regex:?} is not valid: {error}"
                    ))
                })
            })
            .transpose()?;
        Ok(Filter {
            on_stream_name,
            regex,
            prefixes,
            checkpoint_interval: u64::from(DEFAULT_WINDOW),
        })
    }

    pub(crate) fn parse(
        filter: crate::proto::streams::read_req::options::FilterOptions,
    ) -> Result<Self, Status> {
        let (on_stream_name, expression) = match filter.filter {
            Some(WireFilter::StreamIdentifier(expression)) => (true, expression),
            Some(WireFilter::EventType(expression)) => (false, expression),
            None => {
                return Err(invalid(
                    "a filter names a stream-name or an event-type expression",
                ))
            }
        };
        let Expression { regex, prefix } = expression;
        let mut parsed = Filter::new(on_stream_name, Some(&regex), prefix)?;
        let window = match filter.window {
            Some(Window::Max(max)) if max > 0 => max,
            _ => DEFAULT_WINDOW,
        };
        let multiplier = filter.checkpoint_interval_multiplier.max(1);
        parsed.checkpoint_interval = u64::from(window) * u64::from(multiplier);
        Ok(parsed)
    }

    pub(crate) fn matches(&self, event: &RecordedEvent) -> bool {
        let subject = if self.on_stream_name {
            event.stream.as_str()
        } else {
            event.event_type.as_str()
        };
        match &self.regex {
            Some(regex) => regex.is_match(subject),
            None if self.prefixes.is_empty() => true,
            None => self
                .prefixes
                .iter()
                .any(|prefix| subject.starts_with(prefix.as_str())),
        }
    }
}

enum Read {
    Stream {
        stream: String,
        from: Origin,
        backwards: bool,
        count: u64,
        last_position: bool,
        structured: bool,
    },
    All {
        from: Origin,
        backwards: bool,
        count: u64,
        filter: Option<Filter>,
        structured: bool,
    },
    StreamSubscription {
        stream: String,
        from: Origin,
        structured: bool,
    },
    AllSubscription {
        from: Origin,
        filter: Option<Filter>,
        structured: bool,
    },
}

impl Read {
    fn parse(options: crate::proto::streams::read_req::Options) -> Result<Self, Status> {
        let structured = match options.uuid_option.and_then(|option| option.content) {
            Some(uuid_option::Content::Structured(Empty {})) => true,
            Some(uuid_option::Content::String(Empty {})) => false,
            None => return Err(invalid("a read names its uuid_option")),
        };
        // `resolve_links` needs no handling: the store writes no link events, so a read with it
        // set is the same as one without.
        let backwards = options.read_direction == ReadDirection::Backwards as i32;
        let filter = match options.filter_option {
            Some(FilterOption::Filter(filter)) => Some(Filter::parse(filter)?),
            Some(FilterOption::NoFilter(Empty {})) | None => None,
        };
        let count = match options.count_option {
            Some(CountOption::Count(count)) => Some(count),
            Some(CountOption::Subscription(_)) => None,
            None => return Err(invalid("a read has a count or is a subscription")),
        };
        match options.stream_option {
            Some(StreamOption::Stream(stream_options)) => {
                let stream = codec::stream_name(stream_options.stream_identifier.as_ref())
                    .map_err(status::codec)?;
                let from = match stream_options.revision_option {
                    Some(RevisionOption::Revision(END)) | Some(RevisionOption::End(Empty {})) => {
                        Origin::End
                    }
                    Some(RevisionOption::Revision(revision)) => Origin::At(revision),
                    Some(RevisionOption::Start(Empty {})) | None => Origin::Start,
                };
                if filter.is_some() {
                    return Err(invalid("filters apply to reads of $all only"));
                }
                match count {
                    Some(count) => Ok(Read::Stream {
                        stream,
                        from,
                        backwards,
                        count,
                        last_position: options
                            .control_option
                            .is_some_and(|control| control.compatibility >= 1),
                        structured,
                    }),
                    None if backwards => Err(invalid("subscriptions read forwards")),
                    None => Ok(Read::StreamSubscription {
                        stream,
                        from,
                        structured,
                    }),
                }
            }
            Some(StreamOption::All(all_options)) => {
                let from = match all_options.all_option {
                    Some(AllOption::Position(position)) if position.commit_position == END => {
                        Origin::End
                    }
                    Some(AllOption::Position(position)) => {
                        if position.commit_position > i64::MAX as u64 {
                            return Err(invalid(format!(
                                "position {} is beyond the log",
                                position.commit_position
                            )));
                        }
                        Origin::At(position.commit_position)
                    }
                    Some(AllOption::End(Empty {})) => Origin::End,
                    Some(AllOption::Start(Empty {})) | None => Origin::Start,
                };
                match count {
                    Some(count) => Ok(Read::All {
                        from,
                        backwards,
                        count,
                        filter,
                        structured,
                    }),
                    None if backwards => Err(invalid("subscriptions read forwards")),
                    None => Ok(Read::AllSubscription {
                        from,
                        filter,
                        structured,
                    }),
                }
            }
            None => Err(invalid("a read names a stream or $all")),
        }
    }

    fn is_subscription(&self) -> bool {
        matches!(
            self,
            Read::StreamSubscription { .. } | Read::AllSubscription { .. }
        )
    }

    async fn run(self, store: &EventStore, tx: &Sender) -> Result<(), Status> {
        match self {
            Read::Stream {
                stream,
                from,
                backwards,
                count,
                last_position,
                structured,
            } => {
                read_stream(
                    store,
                    tx,
                    &stream,
                    from,
                    backwards,
                    count,
                    last_position,
                    structured,
                )
                .await
            }
            Read::All {
                from,
                backwards,
                count,
                filter,
                structured,
            } => read_all(store, tx, from, backwards, count, filter, structured).await,
            Read::StreamSubscription {
                stream,
                from,
                structured,
            } => subscribe_to_stream(store, tx, &stream, from, structured).await,
            Read::AllSubscription {
                from,
                filter,
                structured,
            } => subscribe_to_all(store, tx, from, filter, structured).await,
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

fn event_message(event: &RecordedEvent, structured: bool) -> Content {
    Content::Event(ReadEvent {
        event: Some(codec::wire_event(event, structured)),
        link: None,
        position: Some(read_event::Position::CommitPosition(event.position)),
    })
}

fn page_size(count: u64) -> u32 {
    u32::try_from(count.clamp(1, PAGE)).expect("at most PAGE")
}

#[allow(clippy::too_many_arguments)]
async fn read_stream(
    store: &EventStore,
    tx: &Sender,
    stream: &str,
    from: Origin,
    backwards: bool,
    count: u64,
    last_position: bool,
    structured: bool,
) -> Result<(), Status> {
    let Some(last) = store.stream_version(stream).await.map_err(status::store)? else {
        send(
            tx,
            Content::StreamNotFound(read_resp::StreamNotFound {
                stream_identifier: Some(codec::stream_identifier(stream)),
            }),
        )
        .await;
        return Ok(());
    };
    let options = match (from, backwards) {
        (Origin::Start, false) => Some(ReadStreamOptions::forwards()),
        (Origin::At(revision), false) if revision <= last => {
            Some(ReadStreamOptions::forwards().from_version(revision))
        }
        (Origin::At(_) | Origin::End, false) => None,
        (Origin::Start, true) => Some(ReadStreamOptions::backwards().from_version(0)),
        (Origin::At(revision), true) => {
            Some(ReadStreamOptions::backwards().from_version(revision.min(last)))
        }
        (Origin::End, true) => Some(ReadStreamOptions::backwards()),
    };
    if let Some(options) = options.filter(|_| count > 0) {
        let mut events =
            store.read_stream(stream, options.page_size(page_size(count)).limit(count));
        while let Some(event) = events.next().await {
            let event = event.map_err(status::store)?;
            if !send(tx, event_message(&event, structured)).await {
                return Ok(());
            }
        }
    }
    if last_position {
        send(tx, Content::LastStreamPosition(last)).await;
    }
    Ok(())
}

async fn read_all(
    store: &EventStore,
    tx: &Sender,
    from: Origin,
    backwards: bool,
    count: u64,
    filter: Option<Filter>,
    structured: bool,
) -> Result<(), Status> {
    let options = match (from, backwards) {
        (Origin::Start, false) => ReadAllOptions::default(),
        // Forwards from a position includes the event at it.
        (Origin::At(position), false) => {
            ReadAllOptions::default().after(position.saturating_sub(1))
        }
        (Origin::End, false) | (Origin::Start, true) => return Ok(()),
        // Backwards from a position excludes it.
        (Origin::At(position), true) => ReadAllOptions::default().backwards(Some(position)),
        (Origin::End, true) => ReadAllOptions::default().backwards(None),
    };
    if count == 0 {
        return Ok(());
    }
    // With a filter the count is of the events sent, not of those read.
    let options = match &filter {
        Some(_) => options.page_size(PAGE as u32),
        None => options.page_size(page_size(count)).limit(count),
    };
    let mut sent = 0_u64;
    let mut events = store.read_all(options);
    while let Some(event) = events.next().await {
        let event = event.map_err(status::store)?;
        if filter
            .as_ref()
            .is_some_and(|filter| !filter.matches(&event))
        {
            continue;
        }
        if !send(tx, event_message(&event, structured)).await {
            return Ok(());
        }
        sent += 1;
        if sent == count {
            break;
        }
    }
    Ok(())
}

fn now() -> prost_types::Timestamp {
    prost_types::Timestamp::from(SystemTime::now())
}

fn confirmation() -> Content {
    Content::Confirmation(read_resp::SubscriptionConfirmation {
        subscription_id: uuid::Uuid::new_v4().to_string(),
    })
}

fn checkpoint(position: u64) -> Content {
    Content::Checkpoint(read_resp::Checkpoint {
        commit_position: position,
        prepare_position: position,
        timestamp: Some(now()),
    })
}

async fn subscribe_to_all(
    store: &EventStore,
    tx: &Sender,
    from: Origin,
    filter: Option<Filter>,
    structured: bool,
) -> Result<(), Status> {
    // The start is fixed before the confirmation: a client that appends once confirmed
    // gets its event.
    let head = store.head_position().await.map_err(status::store)?;
    if !send(tx, confirmation()).await {
        return Ok(());
    }
    // Starts are exclusive: a subscription from a position begins after it.
    let after = match from {
        Origin::Start => 0,
        Origin::At(position) => position,
        Origin::End => head,
    };
    let caught_up = |position: u64| {
        Content::CaughtUp(read_resp::CaughtUp {
            timestamp: Some(now()),
            stream_revision: None,
            position: (position > 0).then_some(read_resp::Position {
                commit_position: position,
                prepare_position: position,
            }),
        })
    };
    let mut live = after >= head;
    if live {
        if filter.is_some() && !send(tx, checkpoint(after)).await {
            return Ok(());
        }
        if !send(tx, caught_up(after)).await {
            return Ok(());
        }
    }
    let mut events = store.subscribe_to_all(
        SubscriptionOptions::default()
            .after(after)
            .page_size(PAGE as u32),
    );
    let mut considered = 0_u64;
    while let Some(event) = events.next().await {
        let event = event.map_err(status::store)?;
        considered += 1;
        if filter.as_ref().is_none_or(|filter| filter.matches(&event))
            && !send(tx, event_message(&event, structured)).await
        {
            return Ok(());
        }
        let reached_head = !live && event.position >= head;
        if let Some(filter) = &filter {
            if (considered.is_multiple_of(filter.checkpoint_interval) || reached_head)
                && !send(tx, checkpoint(event.position)).await
            {
                return Ok(());
            }
        }
        if reached_head {
            live = true;
            if !send(tx, caught_up(event.position)).await {
                return Ok(());
            }
        }
    }
    Ok(())
}

async fn subscribe_to_stream(
    store: &EventStore,
    tx: &Sender,
    stream: &str,
    from: Origin,
    structured: bool,
) -> Result<(), Status> {
    // The start is fixed before the confirmation, as for $all.
    let last = store.stream_version(stream).await.map_err(status::store)?;
    if !send(tx, confirmation()).await {
        return Ok(());
    }
    // Starts are exclusive: a subscription from a revision begins after it.
    let next = match from {
        Origin::Start => 0,
        Origin::At(revision) => revision.saturating_add(1),
        Origin::End => last.map_or(0, |last| last + 1),
    };
    let caught_up = |revision: Option<u64>| {
        Content::CaughtUp(read_resp::CaughtUp {
            timestamp: Some(now()),
            stream_revision: revision.and_then(|revision| i64::try_from(revision).ok()),
            position: None,
        })
    };
    let mut live = last.is_none_or(|last| next > last);
    if live && !send(tx, caught_up(last)).await {
        return Ok(());
    }
    let mut events =
        store.subscribe_to_stream(stream, SubscriptionOptions::default().from_version(next));
    while let Some(event) = events.next().await {
        let event = event.map_err(status::store)?;
        if !send(tx, event_message(&event, structured)).await {
            return Ok(());
        }
        if !live && last.is_some_and(|last| event.version >= last) {
            live = true;
            if !send(tx, caught_up(Some(event.version))).await {
                return Ok(());
            }
        }
    }
    Ok(())
}
