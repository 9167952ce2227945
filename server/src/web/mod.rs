//! The stream browser, `/metrics` and `/health`: HTTP/1.1 and h2 on the gRPC port.
//!
//! KurrentDB answers its web UI on the port its clients use; so does `eventstore serve`. The
//! gRPC services and these routes share one router: a request goes to gRPC by its path
//! (`/event_store.client.…/Method`), everything else comes here.
//!
//! - `/ui`: the pages (server-rendered HTML, one stylesheet and one script from this
//!   server, nothing from outside). Read-only pages are open when the server listens on
//!   loopback; elsewhere they need a sign-in too. Every action that changes state needs the
//!   credentials of a member of `eventstore_admin` ([`auth`]).
//! - `/metrics`: the Prometheus text format ([`metrics`]).
//! - `/health`: 200 when the database answers, 503 when it does not.

pub mod auth;
pub mod html;
pub mod metrics;
mod pages;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use pg_eventstore_client::projection::Projection;
use pg_eventstore_client::EventStore;
use tokio::sync::watch;

/// What the pages share.
pub struct Web {
    pub(crate) store: EventStore,
    pub(crate) projections: Vec<Arc<dyn Projection>>,
    pub(crate) metrics: Arc<metrics::Metrics>,
    pub(crate) sessions: auth::Sessions,
    /// Whether read-only pages are open to anyone (the server listens on loopback).
    pub(crate) open_reads: bool,
    pub(crate) tls: bool,
    pub(crate) stopped: watch::Receiver<bool>,
    /// Rebuilds started from the projections page, by projection.
    pub(crate) rebuilds: Mutex<HashMap<String, pages::Rebuild>>,
}

impl Web {
    /// The pages' state.
    pub(crate) fn new(
        store: EventStore,
        projections: Vec<Arc<dyn Projection>>,
        metrics: Arc<metrics::Metrics>,
        open_reads: bool,
        tls: bool,
        stopped: watch::Receiver<bool>,
    ) -> Arc<Web> {
        Arc::new(Web {
            sessions: auth::Sessions::default(),
            store,
            projections,
            metrics,
            open_reads,
            tls,
            stopped,
            rebuilds: Mutex::new(HashMap::new()),
        })
    }
}

/// The HTTP routes; `ui` false leaves out the pages (`--no-ui`), not `/metrics` and
/// `/health`.
pub(crate) fn router(web: Arc<Web>, ui: bool) -> Router {
    let mut router = Router::new()
        .route("/metrics", get(metrics::render))
        .route("/health", get(health));
    if ui {
        router = router
            .route("/", get(|| async { Redirect::to("/ui") }))
            .route("/ui", get(pages::dashboard))
            .route("/ui/style.css", get(style))
            .route("/ui/app.js", get(script))
            .route("/ui/streams", get(pages::streams))
            .route("/ui/stream", get(pages::stream))
            .route("/ui/event", get(pages::event))
            .route("/ui/correlation", get(pages::correlation))
            .route("/ui/log", get(pages::log))
            .route("/ui/log/live", get(pages::live))
            .route("/ui/groups", get(pages::groups))
            .route("/ui/group", get(pages::group))
            .route("/ui/group/replay", post(pages::replay_parked))
            .route("/ui/group/drop", post(pages::drop_parked))
            .route("/ui/projections", get(pages::projections))
            .route("/ui/projections/rebuild", post(pages::rebuild))
            .route("/ui/login", get(auth::login_page).post(auth::login))
            .route("/ui/logout", post(auth::logout));
    }
    router
        .layer(axum::middleware::map_response(security_headers))
        .with_state(web)
}

impl Web {
    /// Every projection with a checkpoint, the projections of this program with their
    /// event types; none where the checkpoints' table was never created (a store installed
    /// without `eventstore migrate`).
    pub(crate) async fn projection_status(
        &self,
    ) -> pg_eventstore_client::Result<Vec<pg_eventstore_client::projection::ProjectionStats>> {
        let known: Vec<&dyn Projection> = self.projections.iter().map(|p| &**p).collect();
        match pg_eventstore_client::projection::status(&self.store, &known).await {
            Err(error) if matches!(error.sqlstate().as_deref(), Some("42P01" | "3F000")) => {
                Ok(Vec::new())
            }
            other => other,
        }
    }
}

async fn health(State(web): State<Arc<Web>>) -> Response {
    let answered = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(web.store.pool()),
    )
    .await;
    let (status, text) = match answered {
        Ok(Ok(_)) => (StatusCode::OK, "ok\n".to_owned()),
        Ok(Err(error)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the database does not answer: {error}\n"),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "the database did not answer within 5 s\n".to_owned(),
        ),
    };
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", include_str!("assets/style.css"))
}

async fn script() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("assets/app.js"),
    )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// What answers a path no route has: UNIMPLEMENTED for a gRPC call (an unknown service),
/// a 404 page otherwise.
pub(crate) async fn fallback(headers: axum::http::HeaderMap) -> Response {
    if metrics::is_grpc(&headers) {
        tonic::Status::unimplemented("this server has no such service")
            .into_http::<axum::body::Body>()
    } else {
        WebError::NotFound("no such page".to_owned()).into_response()
    }
}

/// Headers on every answer of these routes (gRPC's are not among them): no inline script,
/// no outside resource, no framing.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// Why a page cannot be shown.
#[derive(Debug)]
pub(crate) enum WebError {
    /// A parameter is wrong (400).
    BadRequest(String),
    /// Nothing has that name (404).
    NotFound(String),
    /// Credentials are missing or wrong (401).
    Unauthorized(String),
    /// The credentials are good, the role may not do this (403).
    Forbidden(String),
    /// The store failed (500, or 503 when the database cannot be reached).
    Store(pg_eventstore_client::Error),
}

impl From<pg_eventstore_client::Error> for WebError {
    fn from(error: pg_eventstore_client::Error) -> Self {
        match &error {
            pg_eventstore_client::Error::InvalidArgument(message) => {
                WebError::BadRequest(message.clone())
            }
            pg_eventstore_client::Error::GroupNotFound(group) => {
                WebError::NotFound(format!("there is no group {group:?}"))
            }
            _ if error.sqlstate().as_deref() == Some("22023") => {
                WebError::BadRequest(error.to_string())
            }
            _ if error.sqlstate().as_deref() == Some("42501") => {
                WebError::Forbidden(error.to_string())
            }
            _ => WebError::Store(error),
        }
    }
}

impl From<sqlx::Error> for WebError {
    fn from(error: sqlx::Error) -> Self {
        WebError::from(pg_eventstore_client::Error::Database(error))
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let (status, message) = match &self {
            WebError::BadRequest(message) => (StatusCode::BAD_REQUEST, message.clone()),
            WebError::NotFound(message) => (StatusCode::NOT_FOUND, message.clone()),
            WebError::Unauthorized(message) => (StatusCode::UNAUTHORIZED, message.clone()),
            WebError::Forbidden(message) => (StatusCode::FORBIDDEN, message.clone()),
            WebError::Store(error) => {
                let status = if error.is_transient() {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::INTERNAL_SERVER_ERROR
                };
                tracing::warn!(%error, "a page failed");
                (status, error.to_string())
            }
        };
        let mut body = format!(
            "<p class=\"error\" id=\"error\">{}</p>",
            html::esc(&message)
        );
        if matches!(self, WebError::Unauthorized(_) | WebError::Forbidden(_)) {
            body.push_str(
                "<p>Actions that change the store need a member of \
                 <code>eventstore_admin</code>: <a href=\"/ui/login\">sign in</a>.</p>",
            );
        }
        let title = status.canonical_reason().unwrap_or("Error");
        let mut response = html::page(
            html::Section::Dashboard,
            title,
            &html::Viewer { role: None },
            &body,
        );
        *response.status_mut() = status;
        response
    }
}
