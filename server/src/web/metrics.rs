//! `/metrics` in the Prometheus text format, the server's request counters, and the rates
//! the dashboard draws.
//!
//! The store's figures are read when `/metrics` is scraped: `eventstore.health()` (so they
//! are the health view's own), the `eventstore.groups` view, the projections' checkpoints,
//! and PostgreSQL's statistics of `eventstore.events` for the append and read counters. The
//! server's own figures are counted as requests end: every gRPC call and HTTP request, by
//! method (or route) and status, with its duration until its response ended, which for a
//! subscription is how long it stayed open.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::{Body as _, Frame};
use pg_eventstore_client::projection;
use pg_eventstore_client::EventStore;
use sqlx::Row;

use super::Web;

/// Upper bounds of the request-duration histogram's buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
];
/// Label sets kept at most; requests beyond them are counted under method "other", so that
/// clients sending made-up paths cannot grow the output without bound.
const MAX_SERIES: usize = 256;
/// How often the rates are sampled, and for how long they are kept.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);
const KEEP_SAMPLES: usize = 121;

#[derive(Default, Clone)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (bucket, bound) in self.buckets.iter_mut().zip(BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }
}

/// A label set: protocol (`grpc` or `http`), method or route.
type Key = (&'static str, String);

#[derive(Default)]
struct Requests {
    /// By protocol, method and status code.
    counts: BTreeMap<(&'static str, String, String), u64>,
    durations: BTreeMap<Key, Histogram>,
}

#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    appended: i64,
    read_rows: i64,
    served: u64,
}

/// The server's counters.
#[derive(Default)]
pub struct Metrics {
    requests: Mutex<Requests>,
    served: AtomicU64,
    samples: Mutex<VecDeque<Sample>>,
}

impl Metrics {
    /// Counts events handed to clients (gRPC reads and subscriptions, pages, the live log).
    pub fn served_events(&self, events: usize) {
        self.served.fetch_add(events as u64, Ordering::Relaxed);
    }

    fn observe(&self, protocol: &'static str, method: String, code: String, seconds: f64) {
        let mut requests = self.requests.lock().expect("metrics lock");
        let mut key = (protocol, method);
        if !requests.durations.contains_key(&key) && requests.durations.len() >= MAX_SERIES {
            key.1 = "other".to_owned();
        }
        requests
            .durations
            .entry(key.clone())
            .or_default()
            .observe(seconds);
        *requests.counts.entry((key.0, key.1, code)).or_insert(0) += 1;
    }

    /// `messages` as a call's response stream, counting the events among them (`is_event`)
    /// as they are handed to the transport.
    pub(crate) fn counted<T: Send + 'static>(
        self: &Arc<Self>,
        messages: tokio::sync::mpsc::Receiver<Result<T, tonic::Status>>,
        is_event: fn(&T) -> bool,
    ) -> Pin<Box<dyn futures_util::Stream<Item = Result<T, tonic::Status>> + Send>> {
        let metrics = self.clone();
        Box::pin(futures_util::StreamExt::inspect(
            tokio_stream::wrappers::ReceiverStream::new(messages),
            move |message| {
                if message.as_ref().is_ok_and(is_event) {
                    metrics.served_events(1);
                }
            },
        ))
    }

    /// Samples the store's append and read counters every few seconds, for the dashboard's
    /// rates, until the task is dropped.
    pub async fn sample(self: Arc<Self>, store: EventStore) {
        let mut every = tokio::time::interval(SAMPLE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            match table_counters(&store).await {
                Ok((appended, read_rows)) => {
                    let mut samples = self.samples.lock().expect("metrics lock");
                    samples.push_back(Sample {
                        at: Instant::now(),
                        appended,
                        read_rows,
                        served: self.served.load(Ordering::Relaxed),
                    });
                    while samples.len() > KEEP_SAMPLES {
                        samples.pop_front();
                    }
                }
                Err(error) => tracing::debug!(%error, "cannot sample the store's counters"),
            }
        }
    }

    /// The dashboard's rates: averages over the last minute and the last ten, and a chart.
    pub fn rates_html(&self) -> String {
        let samples: Vec<Sample> = self
            .samples
            .lock()
            .expect("metrics lock")
            .iter()
            .copied()
            .collect();
        if samples.len() < 2 {
            return "<p class=\"empty\" id=\"rates\">The rates appear once the server has \
                    sampled the store twice (every 5 s).</p>"
                .to_owned();
        }
        let rate = |from: &Sample, to: &Sample, what: fn(&Sample) -> f64| {
            let seconds = to.at.duration_since(from.at).as_secs_f64().max(0.001);
            ((what(to) - what(from)) / seconds).max(0.0)
        };
        let appended: fn(&Sample) -> f64 = |s| s.appended as f64;
        let read: fn(&Sample) -> f64 = |s| s.read_rows as f64;
        let served: fn(&Sample) -> f64 = |s| s.served as f64;
        let last = samples[samples.len() - 1];
        let since = |window: Duration| {
            samples
                .iter()
                .find(|s| last.at.duration_since(s.at) <= window)
                .copied()
                .unwrap_or(samples[0])
        };
        let minute = since(Duration::from_secs(60));
        let all = samples[0];
        let mut out = String::from(
            "<table id=\"rates\"><thead><tr><th>per second</th><th>last minute</th>\
             <th>last 10 minutes</th></tr></thead><tbody>",
        );
        for (label, what) in [
            ("events appended", appended),
            ("event rows read (all readers)", read),
            ("events served by this server", served),
        ] {
            let _ = write!(
                out,
                "<tr><td>{label}</td><td>{:.1}</td><td>{:.1}</td></tr>",
                rate(&minute, &last, what),
                rate(&all, &last, what)
            );
        }
        out.push_str("</tbody></table>");
        let series = |what: fn(&Sample) -> f64| -> Vec<f64> {
            samples
                .windows(2)
                .map(|w| rate(&w[0], &w[1], what))
                .collect()
        };
        let appends = series(appended);
        let reads = series(read);
        let top = appends
            .iter()
            .chain(&reads)
            .copied()
            .fold(1.0_f64, f64::max);
        let (width, height) = (600.0, 120.0);
        let step = width / (KEEP_SAMPLES - 2) as f64;
        let points = |values: &[f64]| -> String {
            let offset = width - step * (values.len().saturating_sub(1)) as f64;
            values
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    format!(
                        "{:.1},{:.1}",
                        offset + step * i as f64,
                        height - v / top * (height - 4.0)
                    )
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        let _ = write!(
            out,
            "<figure><svg class=\"chart\" viewBox=\"0 0 {width} {height}\" role=\"img\" \
             aria-label=\"appends and reads per second, last 10 minutes\">\
             <polyline fill=\"none\" stroke=\"#2b6cb0\" stroke-width=\"2\" points=\"{}\"/>\
             <polyline fill=\"none\" stroke=\"#c05621\" stroke-width=\"2\" points=\"{}\"/></svg>\
             <figcaption><span class=\"appends\">appends/s</span> and \
             <span class=\"reads\">rows read/s</span> over the last 10 minutes, \
             up to {top:.0}/s</figcaption></figure>",
            points(&appends),
            points(&reads),
        );
        out
    }
}

/// PostgreSQL's counters of `eventstore.events`: rows inserted and rows read, since its
/// statistics were last reset. A transaction's counts arrive when it ends (or within a
/// second or so while a session stays busy).
async fn table_counters(store: &EventStore) -> Result<(i64, i64), sqlx::Error> {
    let row = sqlx::query(
        "SELECT coalesce(n_tup_ins, 0) AS appended, \
                coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) AS read_rows \
         FROM pg_catalog.pg_stat_user_tables \
         WHERE schemaname = 'eventstore' AND relname = 'events'",
    )
    .fetch_optional(store.pool())
    .await?;
    Ok(match row {
        Some(row) => (row.try_get("appended")?, row.try_get("read_rows")?),
        None => (0, 0),
    })
}

/// The route's name for the counters: the gRPC method, or the HTTP route matched.
fn method_of(request: &Request, grpc: bool) -> String {
    if grpc {
        request.uri().path().to_owned()
    } else {
        request
            .extensions()
            .get::<MatchedPath>()
            .map_or("unmatched", MatchedPath::as_str)
            .to_owned()
    }
}

/// Middleware counting every request when its response ends.
pub(crate) async fn track(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let grpc = is_grpc(request.headers());
    let method = method_of(&request, grpc);
    let response = next.run(request).await;
    let code = if grpc {
        // A call that fails at once answers with its status in the headers.
        response
            .headers()
            .get("grpc-status")
            .and_then(|value| value.to_str().ok())
            .map(grpc_code)
    } else {
        Some(response.status().as_u16().to_string())
    };
    let recorder = Recorder {
        metrics,
        protocol: if grpc { "grpc" } else { "http" },
        method,
        code,
        started,
    };
    let (parts, body) = response.into_parts();
    Response::from_parts(
        parts,
        Body::new(Observed {
            inner: body,
            recorder: Some(recorder),
        }),
    )
}

/// Whether a request or response is gRPC's (by its content type).
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"))
}

fn grpc_code(value: &str) -> String {
    match value.parse::<i32>() {
        Ok(number) => format!("{:?}", tonic::Code::from(number)),
        Err(_) => "Unknown".to_owned(),
    }
}

struct Recorder {
    metrics: Arc<Metrics>,
    protocol: &'static str,
    method: String,
    code: Option<String>,
    started: Instant,
}

impl Recorder {
    fn finish(self, ended: bool) {
        let code = self.code.unwrap_or_else(|| {
            // A gRPC response body that ended without a status in its trailers, or one the
            // client stopped reading (a cancelled call).
            if ended { "Unknown" } else { "Cancelled" }.to_owned()
        });
        self.metrics.observe(
            self.protocol,
            self.method,
            code,
            self.started.elapsed().as_secs_f64(),
        );
    }
}

/// A response body that records its request when it ends or is dropped.
struct Observed {
    inner: Body,
    recorder: Option<Recorder>,
}

impl http_body::Body for Observed {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(status) = frame
                    .trailers_ref()
                    .and_then(|trailers| trailers.get("grpc-status"))
                    .and_then(|value| value.to_str().ok())
                {
                    let code = grpc_code(status);
                    if let Some(recorder) = self.recorder.as_mut() {
                        recorder.code = Some(code);
                    }
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                if let Some(recorder) = self.recorder.take() {
                    recorder.finish(true);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        if let Some(recorder) = self.recorder.take() {
            let ended = self.inner.is_end_stream();
            recorder.finish(ended);
        }
    }
}

/// A label value, escaped as the text format wants.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

/// `GET /metrics`.
pub(crate) async fn render(State(web): State<Arc<Web>>) -> Response {
    match metrics_text(&web).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("the store's figures cannot be read: {error}\n"),
        )
            .into_response(),
    }
}

async fn metrics_text(web: &Web) -> Result<String, pg_eventstore_client::Error> {
    let store = &web.store;
    let health = store.health().await?;
    let (appended, read_rows) = table_counters(store).await?;
    let groups = store.groups().await?;
    let projections = web.projection_status().await?;
    let mut out = String::new();

    for (name, help, value) in [
        (
            "eventstore_streams",
            "Streams with at least one event.",
            health.streams as f64,
        ),
        ("eventstore_events", "Events stored.", health.events as f64),
        (
            "eventstore_head_position",
            "The newest position read_all hands out now.",
            health.head_position as f64,
        ),
        (
            "eventstore_held_back_events",
            "Committed events not readable yet because an older transaction still runs.",
            health.held_back_events as f64,
        ),
        (
            "eventstore_oldest_transaction_age_seconds",
            "Age of the cluster's oldest transaction holding a transaction id (0 when none).",
            health
                .oldest_transaction
                .as_ref()
                .map_or(0.0, |t| seconds(t.age)),
        ),
    ] {
        family(&mut out, name, "gauge", help);
        let _ = writeln!(out, "{name} {value}");
    }
    family(
        &mut out,
        "eventstore_appended_events_total",
        "counter",
        "Rows inserted into eventstore.events since its statistics were reset (PostgreSQL's n_tup_ins).",
    );
    let _ = writeln!(out, "eventstore_appended_events_total {appended}");
    family(
        &mut out,
        "eventstore_read_rows_total",
        "counter",
        "Rows of eventstore.events read by any reader since its statistics were reset.",
    );
    let _ = writeln!(out, "eventstore_read_rows_total {read_rows}");
    family(
        &mut out,
        "eventstore_served_events_total",
        "counter",
        "Events this server handed to its clients (gRPC reads and subscriptions, pages, live log).",
    );
    let _ = writeln!(
        out,
        "eventstore_served_events_total {}",
        web.metrics.served.load(Ordering::Relaxed)
    );

    type GroupFigure = fn(&pg_eventstore_client::GroupInfo) -> u64;
    let group_figures: [(&str, &str, GroupFigure); 6] = [
        (
            "eventstore_group_position",
            "Every event of the group up to this position is acked or parked.",
            |g| g.position,
        ),
        (
            "eventstore_group_in_flight",
            "Events leased to consumers now.",
            |g| g.in_flight,
        ),
        ("eventstore_group_parked", "Parked events.", |g| g.parked),
        (
            "eventstore_group_lag",
            "Events of the group not handled yet and not in flight.",
            |g| g.lag,
        ),
        (
            "eventstore_group_consumers",
            "Consumers holding leases.",
            |g| g.consumers,
        ),
        (
            "eventstore_group_held_back",
            "Events waiting behind a parked event of their stream.",
            |g| g.held_back,
        ),
    ];
    for (name, help, figure) in group_figures {
        family(&mut out, name, "gauge", help);
        for group in &groups {
            let _ = writeln!(
                out,
                "{name}{{group=\"{}\"}} {}",
                label(&group.name),
                figure(group)
            );
        }
    }

    type ProjectionFigure = fn(&projection::ProjectionStats) -> f64;
    let projection_figures: [(&str, &str, ProjectionFigure); 6] = [
        (
            "eventstore_projection_position",
            "The projection's checkpoint: every event through it is applied.",
            |p| p.position as f64,
        ),
        (
            "eventstore_projection_events_behind",
            "Events after the checkpoint the projection has still to apply.",
            |p| p.events_behind as f64,
        ),
        (
            "eventstore_projection_lag_seconds",
            "How long ago the oldest event not applied yet was recorded.",
            |p| seconds(p.lag),
        ),
        (
            "eventstore_projection_events_applied",
            "Events applied since the projection last started from zero.",
            |p| p.events_applied as f64,
        ),
        (
            "eventstore_projection_running",
            "1 when a daemon holds the projection's lock.",
            |p| f64::from(u8::from(p.owner.is_some())),
        ),
        (
            "eventstore_projection_failed",
            "1 when the projection is stopped at an event it cannot apply.",
            |p| f64::from(u8::from(p.failure.is_some())),
        ),
    ];
    for (name, help, figure) in projection_figures {
        family(&mut out, name, "gauge", help);
        for p in &projections {
            let _ = writeln!(
                out,
                "{name}{{projection=\"{}\"}} {}",
                label(&p.name),
                figure(p)
            );
        }
    }

    let requests = web.metrics.requests.lock().expect("metrics lock");
    family(
        &mut out,
        "eventstore_server_requests_total",
        "counter",
        "gRPC calls and HTTP requests this server answered, by method or route and status.",
    );
    for ((protocol, method, code), n) in &requests.counts {
        let _ = writeln!(
            out,
            "eventstore_server_requests_total{{protocol=\"{protocol}\",method=\"{}\",code=\"{}\"}} {n}",
            label(method),
            label(code)
        );
    }
    let name = "eventstore_server_request_duration_seconds";
    family(
        &mut out,
        name,
        "histogram",
        "How long gRPC calls and HTTP requests took until their response ended.",
    );
    for ((protocol, method), histogram) in &requests.durations {
        let labels = format!("protocol=\"{protocol}\",method=\"{}\"", label(method));
        for (bound, n) in BUCKETS.iter().zip(histogram.buckets) {
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels},le=\"+Inf\"}} {}",
            histogram.count
        );
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", histogram.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", histogram.count);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative() {
        let mut h = Histogram::default();
        h.observe(0.003);
        h.observe(0.2);
        h.observe(100.0);
        assert_eq!(h.count, 3);
        assert_eq!(h.buckets[0], 0);
        assert_eq!(h.buckets[3], 1, "0.005 holds 0.003");
        assert_eq!(h.buckets[8], 2, "0.25 holds 0.003 and 0.2");
        assert_eq!(h.buckets[BUCKETS.len() - 1], 2, "60 s does not hold 100 s");
    }

    #[test]
    fn label_sets_are_bounded() {
        let metrics = Metrics::default();
        for i in 0..(MAX_SERIES + 10) {
            metrics.observe(
                "grpc",
                format!("/made/up{i}"),
                "Unimplemented".into(),
                0.001,
            );
        }
        let requests = metrics.requests.lock().unwrap();
        assert_eq!(requests.durations.len(), MAX_SERIES + 1);
        assert_eq!(requests.durations[&("grpc", "other".to_owned())].count, 10);
    }

    #[test]
    fn escapes_label_values() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
