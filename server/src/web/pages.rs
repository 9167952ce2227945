//! The pages: dashboard, stream browser, event, correlation, global log (with its live
//! feed), groups and projections, and the actions on the last two.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, Uri};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use futures_util::{StreamExt, TryStreamExt};
use pg_eventstore_client::projection::{self, ProjectionStats};
use pg_eventstore_client::{
    EventStore, GroupInfo, ReadAllOptions, ReadStreamOptions, RecordedEvent, SubscriptionOptions,
    CAUSATION_ID, CORRELATION_ID,
};
use serde::Deserialize;
use serde_json::Value;
use sqlx::Row;
use uuid::Uuid;

use super::auth::{self, Actor, Reader};
use super::html::{self, esc, query, Section};
use super::{Web, WebError};
use crate::codec;

type PageResult = Result<Response, WebError>;

/// Events on one page of a stream or of the log, unless `count` says otherwise.
const PAGE: u64 = 20;
/// The most a page shows.
const MAX_PAGE: u64 = 500;
/// Characters of data the log's rows show.
const PREVIEW: usize = 160;

fn page_size(count: Option<u64>) -> Result<u64, WebError> {
    match count {
        None => Ok(PAGE),
        Some(n @ 1..=MAX_PAGE) => Ok(n),
        Some(n) => Err(WebError::BadRequest(format!(
            "count must be 1 to {MAX_PAGE}, got {n}"
        ))),
    }
}

/// A comma-separated list from a form field; `None` when empty.
fn list(field: Option<&str>) -> Option<Vec<String>> {
    let items: Vec<String> = field
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect();
    (!items.is_empty()).then_some(items)
}

// ----------------------------------------------------------------------------------------
// Dashboard

pub(crate) async fn dashboard(State(web): State<Arc<Web>>, viewer: Reader) -> PageResult {
    let health = web.store.health().await?;
    let mut body = String::from("<div data-refresh=\"5\"></div>");
    let oldest = match &health.oldest_transaction {
        None => "none".to_owned(),
        Some(t) => {
            let mut parts = vec![format!("pid {}", t.pid)];
            for part in [&t.database, &t.application_name, &t.state] {
                if let Some(part) = part.as_deref().filter(|p| !p.is_empty()) {
                    parts.push(esc(part));
                }
            }
            parts.push(format!("{} old", html::age(t.age)));
            format!(
                "{}<br><code>{}</code>",
                parts.join(" · "),
                esc(t.query.as_deref().unwrap_or(""))
            )
        }
    };
    body.push_str(&html::figures(&[
        ("Streams", html::count(health.streams)),
        ("Events", html::count(health.events)),
        ("Head position", health.head_position.to_string()),
        ("Held-back events", html::count(health.held_back_events)),
        ("Oldest writing transaction", oldest),
    ]));
    body.push_str("<h2>Rates</h2>");
    body.push_str(&web.metrics.rates_html());
    Ok(html::page(
        Section::Dashboard,
        "Dashboard",
        &viewer.as_viewer(),
        &body,
    ))
}

// ----------------------------------------------------------------------------------------
// Stream browser

/// Streams (`e`, their first event) with their last event (`l`); the caller adds which.
const FIRST_AND_LAST: &str =
    "SELECT e.stream, e.recorded_at AS created_at, l.version, l.type, l.recorded_at \
     FROM eventstore.events AS e \
     CROSS JOIN LATERAL (SELECT x.version, x.type, x.recorded_at FROM eventstore.events AS x \
                         WHERE x.stream = e.stream ORDER BY x.version DESC LIMIT 1) AS l";

#[derive(Deserialize)]
pub(crate) struct StreamsQuery {
    prefix: Option<String>,
    category: Option<String>,
}

pub(crate) async fn streams(
    State(web): State<Arc<Web>>,
    viewer: Reader,
    Query(q): Query<StreamsQuery>,
) -> PageResult {
    let prefix = q.prefix.unwrap_or_default();
    let category = q.category.unwrap_or_default();
    let mut body = format!(
        "<form method=\"get\" action=\"/ui/streams\" class=\"search\">\
         <label>Stream name starts with <input name=\"prefix\" id=\"prefix\" value=\"{}\"></label>\
         <label>or category <input name=\"category\" id=\"category\" value=\"{}\"></label>\
         <button type=\"submit\" id=\"search\">Search</button></form>",
        esc(&prefix),
        esc(&category)
    );
    // Each query reads an index: the stream-version key from the prefix on, the category
    // index backwards, the primary key backwards.
    let (title, rows) = if !prefix.is_empty() {
        let rows = sqlx::query(&format!(
            "{FIRST_AND_LAST} WHERE e.version = 0 AND e.stream >= $1 \
             AND starts_with(e.stream, $1) ORDER BY e.stream LIMIT 100"
        ))
        .bind(&prefix)
        .fetch_all(web.store.pool())
        .await?;
        (format!("Streams starting with “{}”", esc(&prefix)), rows)
    } else if !category.is_empty() {
        let rows = sqlx::query(&format!(
            "{FIRST_AND_LAST} WHERE split_part(e.stream, '-', 1) = $1 AND e.version = 0 \
             ORDER BY e.position DESC LIMIT 100"
        ))
        .bind(&category)
        .fetch_all(web.store.pool())
        .await?;
        (
            format!("Streams of category “{}”, newest first", esc(&category)),
            rows,
        )
    } else {
        let rows = sqlx::query(
            "SELECT r.stream, f.recorded_at AS created_at, e.version, e.type, e.recorded_at \
             FROM (SELECT stream, max(position) AS position \
                   FROM (SELECT stream, position FROM eventstore.events \
                         ORDER BY position DESC LIMIT 2000) AS newest \
                   GROUP BY stream ORDER BY 2 DESC LIMIT 50) AS r \
             JOIN eventstore.events AS e ON e.position = r.position \
             JOIN eventstore.events AS f ON f.stream = r.stream AND f.version = 0 \
             ORDER BY r.position DESC",
        )
        .fetch_all(web.store.pool())
        .await?;
        ("Recently written streams".to_owned(), rows)
    };
    let mut cells = Vec::with_capacity(rows.len());
    for row in &rows {
        let stream: String = row.try_get("stream")?;
        let version: i64 = row.try_get("version")?;
        let last_type: String = row.try_get("type")?;
        let last: chrono::DateTime<chrono::Utc> = row.try_get("recorded_at")?;
        let created: chrono::DateTime<chrono::Utc> = row.try_get("created_at")?;
        cells.push(vec![
            html::stream_link(&stream),
            html::count(u64::try_from(version + 1).unwrap_or_default()),
            esc(&last_type),
            esc(&html::time(&last)),
            esc(&html::time(&created)),
        ]);
    }
    let _ = write!(body, "<h2>{title}</h2>");
    body.push_str(&html::table(
        "streams",
        &["Stream", "Events", "Last type", "Last written", "Created"],
        &cells,
    ));
    Ok(html::page(
        Section::Streams,
        "Stream browser",
        &viewer.as_viewer(),
        &body,
    ))
}

#[derive(Deserialize)]
pub(crate) struct StreamQuery {
    name: String,
    /// The version the page starts at (inclusive).
    from: Option<u64>,
    /// `forwards` or `backwards` (default).
    dir: Option<String>,
    count: Option<u64>,
}

pub(crate) async fn stream(
    State(web): State<Arc<Web>>,
    viewer: Reader,
    Query(q): Query<StreamQuery>,
) -> PageResult {
    let count = page_size(q.count)?;
    let Some(last) = web.store.stream_version(&q.name).await? else {
        return Err(WebError::NotFound(format!(
            "stream {:?} has no events",
            q.name
        )));
    };
    let forwards = match q.dir.as_deref() {
        None | Some("backwards") => false,
        Some("forwards") => true,
        Some(other) => {
            return Err(WebError::BadRequest(format!(
                "dir must be forwards or backwards, got {other:?}"
            )))
        }
    };
    let options = if forwards {
        ReadStreamOptions::forwards().from_version(q.from.unwrap_or(0))
    } else {
        ReadStreamOptions::backwards().from_version(q.from.unwrap_or(last).min(last))
    };
    let options = options
        .limit(count)
        .page_size(u32::try_from(count).unwrap_or(500));
    let mut events: Vec<RecordedEvent> = web
        .store
        .read_stream(&q.name, options)
        .try_collect()
        .await?;
    web.metrics.served_events(events.len());
    if forwards {
        events.reverse();
    }
    let base = format!("/ui/stream?name={}&count={count}", query(&q.name));
    let mut pager = String::from("<nav class=\"pager\">");
    let newest = events.first().map(|e| e.version);
    let oldest = events.last().map(|e| e.version);
    pager.push_str(&html::link(&base, "Newest"));
    if let Some(newest) = newest.filter(|v| *v < last) {
        pager.push_str(&html::link(
            &format!("{base}&dir=forwards&from={}", newest + 1),
            "Newer",
        ));
    }
    if let Some(oldest) = oldest.filter(|v| *v > 0) {
        pager.push_str(&html::link(
            &format!("{base}&dir=backwards&from={}", oldest - 1),
            "Older",
        ));
    }
    pager.push_str(&html::link(
        &format!("{base}&dir=forwards&from=0"),
        "Oldest",
    ));
    pager.push_str("</nav>");
    let mut body = html::figures(&[
        ("Stream", esc(&q.name)),
        ("Events", html::count(last + 1)),
        (
            "Category",
            esc(q.name.split('-').next().unwrap_or_default()),
        ),
        (
            "Showing versions",
            match (oldest, newest) {
                (Some(o), Some(n)) => format!("{o} – {n}"),
                _ => "none".to_owned(),
            },
        ),
    ]);
    body.push_str(&pager);
    body.push_str("<div id=\"events\">");
    for event in &events {
        body.push_str(&event_html(event));
    }
    body.push_str("</div>");
    body.push_str(&pager);
    Ok(html::page(
        Section::Streams,
        &format!("Stream {}", q.name),
        &viewer.as_viewer(),
        &body,
    ))
}

/// An event with every field, its data and metadata pretty-printed (binary data as hex),
/// and links to what its metadata names.
fn event_html(event: &RecordedEvent) -> String {
    let payload = codec::payload(event);
    let data = if payload.content_type == codec::JSON {
        esc(&html::pretty_json(&String::from_utf8_lossy(&payload.data)))
    } else {
        esc(&html::hex(&payload.data))
    };
    let metadata: Value = serde_json::from_str(event.metadata.get()).unwrap_or(Value::Null);
    let id_field = |key: &str| metadata.get(key).and_then(Value::as_str).map(str::to_owned);
    let mut links = String::new();
    if let Some(causation) = id_field(CAUSATION_ID) {
        let _ = write!(
            links,
            "<li>caused by {}</li>",
            html::event_link(&causation, &causation)
        );
    }
    if let Some(correlation) = id_field(CORRELATION_ID) {
        let _ = write!(
            links,
            "<li>correlation {} ({})</li>",
            html::event_link(&correlation, &correlation),
            html::link(
                &format!("/ui/correlation?id={}", query(&correlation)),
                "every event of it"
            )
        );
    }
    if !links.is_empty() {
        links = format!("<ul class=\"links\">{links}</ul>");
    }
    format!(
        "<article class=\"event\" id=\"v{version}\" data-version=\"{version}\">\
         <header><span class=\"version\">#{version}</span> <span class=\"type\">{kind}</span></header>\
         <dl class=\"fields\"><dt>Stream</dt><dd>{stream}</dd><dt>Position</dt><dd>{position}</dd>\
         <dt>Recorded</dt><dd>{time}</dd><dt>Id</dt><dd>{id}</dd>\
         <dt>Content type</dt><dd>{content_type}</dd></dl>{links}\
         <h3>Data</h3><pre class=\"data\">{data}</pre>\
         <h3>Metadata</h3><pre class=\"metadata\">{metadata}</pre></article>",
        version = event.version,
        kind = esc(&event.event_type),
        stream = html::stream_link(&event.stream),
        position = event.position,
        time = esc(&html::time(&event.recorded_at)),
        id = html::event_link(&event.id.to_string(), &event.id.to_string()),
        content_type = payload.content_type,
        metadata = esc(&html::pretty_json(event.metadata.get())),
    )
}

#[derive(Deserialize)]
pub(crate) struct IdQuery {
    id: String,
}

fn parse_id(id: &str) -> Result<Uuid, WebError> {
    Uuid::parse_str(id.trim())
        .map_err(|_| WebError::BadRequest(format!("{id:?} is not an event id (a UUID)")))
}

const EVENT_COLUMNS: &str = "position, stream, version, type, data, metadata, id, recorded_at";

pub(crate) async fn event(
    State(web): State<Arc<Web>>,
    viewer: Reader,
    Query(q): Query<IdQuery>,
) -> PageResult {
    let id = parse_id(&q.id)?;
    let row = sqlx::query(&format!(
        "SELECT {EVENT_COLUMNS} FROM eventstore.events WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(web.store.pool())
    .await?
    .ok_or_else(|| WebError::NotFound(format!("there is no event with id {id}")))?;
    let event = RecordedEvent::from_row(&row)?;
    web.metrics.served_events(1);
    let mut body = format!(
        "<nav class=\"pager\">{}</nav>",
        html::link(
            &html::in_stream_href(&event.stream, event.version),
            "This event in its stream"
        )
    );
    body.push_str(&event_html(&event));
    Ok(html::page(
        Section::Streams,
        &format!("Event {id}"),
        &viewer.as_viewer(),
        &body,
    ))
}

/// The events of a correlation, by position: the event whose id it is, and every event
/// whose metadata names it. This scans the log (there is no index on metadata), stopping
/// at 500 events.
pub(crate) async fn correlation(
    State(web): State<Arc<Web>>,
    viewer: Reader,
    Query(q): Query<IdQuery>,
) -> PageResult {
    let id = parse_id(&q.id)?;
    let rows = sqlx::query(&format!(
        "SELECT {EVENT_COLUMNS} FROM eventstore.events \
         WHERE id = $1 OR metadata ->> '{CORRELATION_ID}' = $1::text \
         ORDER BY position LIMIT 500"
    ))
    .bind(id)
    .fetch_all(web.store.pool())
    .await?;
    let events = rows
        .iter()
        .map(RecordedEvent::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    web.metrics.served_events(events.len());
    let rows: Vec<Vec<String>> = events.iter().map(log_row).collect();
    let body = html::table(
        "events",
        &[
            "Position", "Stream", "Version", "Type", "Recorded", "Id", "Data",
        ],
        &rows,
    );
    Ok(html::page(
        Section::Log,
        &format!("Correlation {id}"),
        &viewer.as_viewer(),
        &body,
    ))
}

// ----------------------------------------------------------------------------------------
// Global log

#[derive(Deserialize)]
pub(crate) struct LogQuery {
    /// Events after this position, oldest first.
    after: Option<u64>,
    /// Events before this position, newest first (the default, from the head).
    before: Option<u64>,
    /// Event types, comma-separated.
    #[serde(rename = "type")]
    event_type: Option<String>,
    /// Categories, comma-separated.
    category: Option<String>,
    count: Option<u64>,
}

fn preview(event: &RecordedEvent) -> String {
    let payload = codec::payload(event);
    let text = if payload.content_type == codec::JSON {
        String::from_utf8_lossy(&payload.data).into_owned()
    } else {
        format!("{} bytes: {}", payload.data.len(), html::hex(&payload.data))
    };
    match text.char_indices().nth(PREVIEW) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text,
    }
}

fn log_row(event: &RecordedEvent) -> Vec<String> {
    vec![
        event.position.to_string(),
        html::stream_link(&event.stream),
        html::link(
            &html::in_stream_href(&event.stream, event.version),
            &event.version.to_string(),
        ),
        esc(&event.event_type),
        esc(&html::time(&event.recorded_at)),
        html::event_link(&event.id.to_string(), &event.id.to_string()),
        format!("<code>{}</code>", esc(&preview(event))),
    ]
}

pub(crate) async fn log(
    State(web): State<Arc<Web>>,
    viewer: Reader,
    Query(q): Query<LogQuery>,
) -> PageResult {
    let count = page_size(q.count)?;
    let types = list(q.event_type.as_deref());
    let categories = list(q.category.as_deref());
    let mut options = ReadAllOptions::default()
        .limit(count)
        .page_size(u32::try_from(count).unwrap_or(500));
    if let Some(types) = &types {
        options = options.event_types(types.clone());
    }
    if let Some(categories) = &categories {
        options = options.categories(categories.clone());
    }
    let head = web.store.head_position().await?;
    let mut events = match q.after {
        Some(after) => {
            let mut events: Vec<RecordedEvent> = web
                .store
                .read_all(options.after(after))
                .try_collect()
                .await?;
            events.reverse();
            events
        }
        None => {
            web.store
                .read_all(options.backwards(q.before))
                .try_collect()
                .await?
        }
    };
    events.truncate(usize::try_from(count).unwrap_or(usize::MAX));
    web.metrics.served_events(events.len());
    let filter = format!(
        "type={}&category={}&count={count}",
        query(q.event_type.as_deref().unwrap_or_default()),
        query(q.category.as_deref().unwrap_or_default())
    );
    let mut pager = String::from("<nav class=\"pager\">");
    pager.push_str(&html::link(&format!("/ui/log?{filter}"), "Newest"));
    if let Some(first) = events.first().filter(|e| e.position < head) {
        pager.push_str(&html::link(
            &format!("/ui/log?{filter}&after={}", first.position),
            "Newer",
        ));
    }
    if let Some(last) = events.last() {
        pager.push_str(&html::link(
            &format!("/ui/log?{filter}&before={}", last.position),
            "Older",
        ));
    }
    pager.push_str(&html::link(&format!("/ui/log?{filter}&after=0"), "Oldest"));
    pager.push_str("</nav>");
    // The live feed starts after the newest event shown, or the head when the page is the
    // newest one.
    let live_after = if q.after.is_none() && q.before.is_none() {
        head
    } else {
        events.first().map_or(head, |e| e.position)
    };
    let mut body = format!(
        "<form method=\"get\" action=\"/ui/log\" class=\"search\">\
         <label>Types <input name=\"type\" id=\"type\" value=\"{}\" placeholder=\"a,b\"></label>\
         <label>Categories <input name=\"category\" id=\"category\" value=\"{}\" placeholder=\"order,user\"></label>\
         <button type=\"submit\" id=\"filter\">Filter</button>\
         <label class=\"live\"><input type=\"checkbox\" id=\"live\" \
          data-feed=\"/ui/log/live?{}&amp;after={live_after}\"> Follow live</label>\
         <span id=\"live-status\"></span></form>",
        esc(q.event_type.as_deref().unwrap_or_default()),
        esc(q.category.as_deref().unwrap_or_default()),
        esc(&filter),
    );
    body.push_str(&pager);
    let rows: Vec<Vec<String>> = events.iter().map(log_row).collect();
    body.push_str(&html::table(
        "log",
        &[
            "Position", "Stream", "Version", "Type", "Recorded", "Id", "Data",
        ],
        &rows,
    ));
    body.push_str(&pager);
    Ok(html::page(
        Section::Log,
        "Global log",
        &viewer.as_viewer(),
        &body,
    ))
}

#[derive(Deserialize)]
pub(crate) struct LiveQuery {
    after: Option<u64>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    category: Option<String>,
}

/// The live log as server-sent events: every new event of the filter after `after`, each
/// as a JSON object with the log row's fields, the event's position as its id. It follows
/// the store's wake-ups, and ends when the server stops or the browser goes away.
pub(crate) async fn live(
    State(web): State<Arc<Web>>,
    _viewer: Reader,
    headers: HeaderMap,
    Query(q): Query<LiveQuery>,
) -> PageResult {
    // EventSource resumes with the last id it saw.
    let resumed = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    let after = match resumed.or(q.after) {
        Some(after) => after,
        None => web.store.head_position().await?,
    };
    let types = list(q.event_type.as_deref());
    let categories = list(q.category.as_deref());
    let mut options = SubscriptionOptions::default().after(after).page_size(500);
    if let Some(types) = types {
        options = options.event_types(types);
    }
    let subscription = match categories.as_deref() {
        Some([category]) => web.store.subscribe_to_category(category, options),
        _ => web.store.subscribe_to_all(options),
    };
    let mut stopped = web.stopped.clone();
    let metrics = web.metrics.clone();
    let events = subscription
        .take_until(async move {
            let _ = stopped.wait_for(|stopped| *stopped).await;
        })
        .filter_map(move |event| {
            let keep = match &event {
                Ok(event) => categories
                    .as_ref()
                    .is_none_or(|c| c.iter().any(|c| c == event.category())),
                Err(_) => true,
            };
            let metrics = metrics.clone();
            async move {
                if !keep {
                    return None;
                }
                Some(Ok::<_, Infallible>(match event {
                    Ok(event) => {
                        metrics.served_events(1);
                        let row = serde_json::json!({
                            "position": event.position,
                            "stream": event.stream,
                            "version": event.version,
                            "type": event.event_type,
                            "recorded_at": html::time(&event.recorded_at),
                            "id": event.id,
                            "data": preview(&event),
                        });
                        SseEvent::default()
                            .id(event.position.to_string())
                            .data(row.to_string())
                    }
                    Err(error) => SseEvent::default().event("failure").data(error.to_string()),
                }))
            }
        });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

// ----------------------------------------------------------------------------------------
// Groups

fn group_row(group: &GroupInfo) -> Vec<String> {
    let settings = &group.settings;
    let filter = match (&settings.categories, &settings.event_types) {
        (None, None) => "the whole log".to_owned(),
        (categories, types) => {
            let mut parts = Vec::new();
            if let Some(categories) = categories {
                parts.push(format!("categories {}", categories.join(", ")));
            }
            if let Some(types) = types {
                parts.push(format!("types {}", types.join(", ")));
            }
            parts.join("; ")
        }
    };
    vec![
        html::link(
            &format!("/ui/group?name={}", query(&group.name)),
            &group.name,
        ),
        group.position.to_string(),
        html::count(group.in_flight),
        html::count(group.parked),
        html::count(group.lag),
        html::count(group.consumers),
        html::count(group.held_back),
        esc(&filter),
        format!(
            "{} attempts, lease {}{}",
            settings.max_attempts,
            html::age(settings.lease_timeout),
            if settings.ordered_by_stream {
                ", ordered by stream"
            } else {
                ""
            }
        ),
    ]
}

const GROUP_COLUMNS: [&str; 9] = [
    "Group",
    "Position",
    "In flight",
    "Parked",
    "Lag",
    "Consumers",
    "Held back",
    "Events",
    "Options",
];

pub(crate) async fn groups(State(web): State<Arc<Web>>, viewer: Reader) -> PageResult {
    let groups = web.store.groups().await?;
    let rows: Vec<Vec<String>> = groups.iter().map(group_row).collect();
    let body = format!(
        "<div data-refresh=\"5\"></div>{}",
        html::table("groups", &GROUP_COLUMNS, &rows)
    );
    Ok(html::page(
        Section::Groups,
        "Persistent subscription groups",
        &viewer.as_viewer(),
        &body,
    ))
}

#[derive(Deserialize)]
pub(crate) struct GroupQuery {
    name: String,
    done: Option<String>,
}

fn action_form(
    action: &str,
    group: &str,
    positions: Option<u64>,
    csrf: &str,
    label: &str,
) -> String {
    format!(
        "<form method=\"post\" action=\"/ui/group/{action}\" class=\"inline\">\
         <input type=\"hidden\" name=\"group\" value=\"{}\">\
         <input type=\"hidden\" name=\"positions\" value=\"{}\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <button type=\"submit\" class=\"{action}\">{label}</button></form>",
        esc(group),
        positions.map(|p| p.to_string()).unwrap_or_default(),
        esc(csrf),
    )
}

pub(crate) async fn group(
    State(web): State<Arc<Web>>,
    viewer: Reader,
    Query(q): Query<GroupQuery>,
) -> PageResult {
    let info = web
        .store
        .groups()
        .await?
        .into_iter()
        .find(|g| g.name == q.name)
        .ok_or_else(|| WebError::NotFound(format!("there is no group {:?}", q.name)))?;
    let parked = web.store.parked(&q.name).await?;
    let csrf = viewer.csrf();
    let mut body = String::new();
    if let Some(done) = &q.done {
        let _ = write!(body, "<p class=\"notice\" id=\"notice\">{}</p>", esc(done));
    }
    body.push_str(&html::table("group", &GROUP_COLUMNS, &[group_row(&info)]));
    let _ = write!(
        body,
        "<h2>Parked events ({})</h2>",
        html::count(parked.len() as u64)
    );
    if !parked.is_empty() {
        body.push_str("<p>");
        body.push_str(&action_form("replay", &q.name, None, csrf, "Replay all"));
        body.push_str(&action_form("drop", &q.name, None, csrf, "Drop all"));
        body.push_str("</p>");
    }
    let rows: Vec<Vec<String>> = parked
        .iter()
        .map(|p| {
            let e = &p.event;
            vec![
                e.position.to_string(),
                html::stream_link(&e.stream),
                e.version.to_string(),
                esc(&e.event_type),
                html::event_link(&e.id.to_string(), &e.id.to_string()),
                p.attempt.to_string(),
                esc(p.reason.as_deref().unwrap_or("")),
                esc(&html::time(&p.parked_at)),
                format!(
                    "{}{}",
                    action_form("replay", &q.name, Some(e.position), csrf, "Replay"),
                    action_form("drop", &q.name, Some(e.position), csrf, "Drop")
                ),
            ]
        })
        .collect();
    body.push_str(&html::table(
        "parked",
        &[
            "Position",
            "Stream",
            "Version",
            "Type",
            "Id",
            "Attempts",
            "Reason",
            "Parked at",
            "",
        ],
        &rows,
    ));
    Ok(html::page(
        Section::Groups,
        &format!("Group {}", q.name),
        &viewer.as_viewer(),
        &body,
    ))
}

#[derive(Deserialize)]
pub(crate) struct ParkedForm {
    group: String,
    /// Comma-separated positions; empty for every parked event.
    #[serde(default)]
    positions: String,
    #[serde(default)]
    csrf: String,
}

fn positions(field: &str) -> Result<Option<Vec<u64>>, WebError> {
    let Some(items) = list(Some(field)) else {
        return Ok(None);
    };
    items
        .iter()
        .map(|item| {
            item.parse::<u64>()
                .map_err(|_| WebError::BadRequest(format!("{item:?} is not a position")))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

pub(crate) async fn replay_parked(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    uri: Uri,
    Form(form): Form<ParkedForm>,
) -> PageResult {
    parked_action(&web, &headers, &uri, form, true).await
}

pub(crate) async fn drop_parked(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    uri: Uri,
    Form(form): Form<ParkedForm>,
) -> PageResult {
    parked_action(&web, &headers, &uri, form, false).await
}

/// Replays or drops parked events as the signed-in admin: through a connection of that
/// role, so that its privileges decide.
async fn parked_action(
    web: &Web,
    headers: &HeaderMap,
    uri: &Uri,
    form: ParkedForm,
    replay: bool,
) -> PageResult {
    let actor: Actor = auth::admin(web, headers, uri, &form.csrf).await?;
    let positions = positions(&form.positions)?;
    let store = EventStore::from_pool(actor.pool.clone());
    let done = if replay {
        store
            .replay_parked(&form.group, positions.as_deref())
            .await?
    } else {
        store.drop_parked(&form.group, positions.as_deref()).await?
    };
    let verb = if replay { "replayed" } else { "dropped" };
    tracing::info!(group = %form.group, role = %actor.role, events = done, "{verb} parked events");
    let notice = format!("{} {verb} {done} parked event(s)", actor.role);
    Ok(Redirect::to(&format!(
        "/ui/group?name={}&done={}",
        query(&form.group),
        query(&notice)
    ))
    .into_response())
}

// ----------------------------------------------------------------------------------------
// Projections

/// A rebuild started from the projections page.
#[derive(Clone, Debug)]
pub(crate) enum Rebuild {
    Running { by: String, done: u64, total: u64 },
    Done { by: String, events: u64 },
    Failed { by: String, error: String },
}

fn projection_row(
    p: &ProjectionStats,
    rebuild: Option<&Rebuild>,
    form: Option<String>,
) -> Vec<String> {
    let failure = match &p.failure {
        None => String::new(),
        Some(f) => format!(
            "<span class=\"error\">stopped at {} ({} v{}, {}): {} · {} failure(s)</span>",
            f.position,
            html::stream_link(&f.stream),
            f.version,
            esc(&f.event_type),
            esc(&f.message),
            p.failures
        ),
    };
    let rebuild = match rebuild {
        None => String::new(),
        Some(Rebuild::Running { by, done, total }) => format!(
            "rebuilding ({by}): {} of {}",
            html::count(*done),
            html::count(*total),
            by = esc(by)
        ),
        Some(Rebuild::Done { by, events }) => {
            format!("rebuilt by {}: {} events", esc(by), html::count(*events))
        }
        Some(Rebuild::Failed { by, error }) => format!(
            "<span class=\"error\">rebuild by {} failed: {}</span>",
            esc(by),
            esc(error)
        ),
    };
    vec![
        esc(&p.name),
        p.position.to_string(),
        html::count(p.events_behind),
        html::age(p.lag),
        esc(p.owner.as_deref().unwrap_or("none")),
        html::count(p.events_applied),
        esc(&html::time(&p.updated_at)),
        failure,
        format!("{rebuild}{}", form.unwrap_or_default()),
    ]
}

pub(crate) async fn projections(State(web): State<Arc<Web>>, viewer: Reader) -> PageResult {
    let stats = web.projection_status().await?;
    let rebuilds = web.rebuilds.lock().expect("rebuilds lock").clone();
    let csrf = viewer.csrf();
    let rows: Vec<Vec<String>> = stats
        .iter()
        .map(|p| {
            let form = web.projections.iter().any(|k| k.name() == p.name).then(|| {
                format!(
                    "<form method=\"post\" action=\"/ui/projections/rebuild\" class=\"inline\">\
                     <input type=\"hidden\" name=\"name\" value=\"{}\">\
                     <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
                     <button type=\"submit\" class=\"rebuild\">Rebuild</button></form>",
                    esc(&p.name),
                    esc(csrf)
                )
            });
            projection_row(p, rebuilds.get(&p.name), form)
        })
        .collect();
    let body = format!(
        "<div data-refresh=\"5\"></div>{}\
         <p class=\"hint\">Rebuild empties the projection's tables and applies the log from \
         the start; readers see the tables fill up meanwhile.</p>",
        html::table(
            "projections",
            &[
                "Projection",
                "Position",
                "Events behind",
                "Lag",
                "Owner",
                "Applied",
                "Updated",
                "Failure",
                "",
            ],
            &rows,
        )
    );
    Ok(html::page(
        Section::Projections,
        "Projections",
        &viewer.as_viewer(),
        &body,
    ))
}

#[derive(Deserialize)]
pub(crate) struct RebuildForm {
    name: String,
    #[serde(default)]
    csrf: String,
}

/// Starts a rebuild of one of this program's projections, as the daemon's `eventstore
/// rebuild` would: through the server's own connection (the role that owns the read
/// models), once an admin asked for it.
pub(crate) async fn rebuild(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    uri: Uri,
    Form(form): Form<RebuildForm>,
) -> PageResult {
    let actor = auth::admin(&web, &headers, &uri, &form.csrf).await?;
    let projection = web
        .projections
        .iter()
        .find(|p| p.name() == form.name)
        .cloned()
        .ok_or_else(|| {
            WebError::NotFound(format!("this server runs no projection {:?}", form.name))
        })?;
    {
        let mut rebuilds = web.rebuilds.lock().expect("rebuilds lock");
        if let Some(Rebuild::Running { .. }) = rebuilds.get(&form.name) {
            return Err(WebError::BadRequest(format!(
                "{} is being rebuilt already",
                form.name
            )));
        }
        rebuilds.insert(
            form.name.clone(),
            Rebuild::Running {
                by: actor.role.clone(),
                done: 0,
                total: 0,
            },
        );
    }
    tracing::info!(projection = %form.name, role = %actor.role, "rebuild asked for");
    let web = web.clone();
    tokio::spawn(async move {
        let name = form.name;
        let by = actor.role;
        let result = projection::rebuild(
            &web.store,
            &*projection,
            projection::REBUILD_BATCH_SIZE,
            |progress| {
                web.rebuilds.lock().expect("rebuilds lock").insert(
                    name.clone(),
                    Rebuild::Running {
                        by: by.clone(),
                        done: progress.done,
                        total: progress.total,
                    },
                );
            },
        )
        .await;
        let state = match result {
            Ok(events) => Rebuild::Done { by, events },
            Err(error) => Rebuild::Failed {
                by,
                error: error.to_string(),
            },
        };
        web.rebuilds
            .lock()
            .expect("rebuilds lock")
            .insert(name, state);
    });
    Ok(Redirect::to("/ui/projections").into_response())
}
