//! Who may do what in the browser.
//!
//! - Signing in checks a role name and password against PostgreSQL itself: the server opens
//!   a connection as that role to the store's database, with the store's host and port.
//!   PostgreSQL's own authentication (`pg_hba.conf`) decides; this server stores no
//!   password. The session keeps that connection pool, and actions go through it, so the
//!   role's privileges apply to them.
//! - Actions that change state (replay, drop, rebuild) need a member of `eventstore_admin`
//!   (issue 7's role; where the roles were not created, the database's owner or a
//!   superuser). They come from a signed-in session, whose form carries the session's
//!   token, or from a request with `Authorization: Basic` (scripts, `curl -u`).
//! - Cross-site requests are refused: the session cookie is `SameSite=Strict` and
//!   `HttpOnly`, every form carries a per-session token, and a state-changing request whose
//!   `Sec-Fetch-Site` or `Origin` shows another site is refused before anything else.
//! - Read-only pages are open when the server listens on loopback; otherwise they need a
//!   signed-in session too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Form, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use sqlx::PgPool;

use super::html::{self, esc, Section};
use super::{Web, WebError};
use crate::callers::{connect_as, SignInError};

/// The session cookie's name.
const COOKIE: &str = "eventstore_session";
/// How long a session lasts.
const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most; the oldest go first.
const MAX_SESSIONS: usize = 1_000;

/// Whether the connected role may administer the store.
const IS_ADMIN_SQL: &str =
    "SELECT CASE WHEN pg_catalog.to_regrole('eventstore_admin') IS NOT NULL \
         THEN pg_catalog.pg_has_role(current_user, 'eventstore_admin', 'MEMBER') \
         ELSE (SELECT r.rolsuper FROM pg_catalog.pg_roles AS r WHERE r.rolname = current_user) \
              OR pg_catalog.pg_has_role(current_user, \
                   (SELECT d.datdba FROM pg_catalog.pg_database AS d \
                    WHERE d.datname = current_database()), 'MEMBER') END";

/// A signed-in role.
pub(crate) struct Session {
    pub(crate) role: String,
    pub(crate) admin: bool,
    pub(crate) pool: PgPool,
    /// The token every form of this session carries.
    pub(crate) csrf: String,
    expires: Instant,
}

/// The signed-in sessions, by cookie value.
#[derive(Default)]
pub(crate) struct Sessions(Mutex<HashMap<String, Arc<Session>>>);

impl Sessions {
    fn get(&self, token: &str) -> Option<Arc<Session>> {
        let mut sessions = self.0.lock().expect("sessions lock");
        match sessions.get(token) {
            Some(session) if session.expires > Instant::now() => Some(session.clone()),
            Some(_) => {
                sessions.remove(token);
                None
            }
            None => None,
        }
    }

    fn insert(&self, session: Session) -> String {
        let token = random_token();
        let mut sessions = self.0.lock().expect("sessions lock");
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS {
            if let Some(oldest) = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(t, _)| t.clone())
            {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(token.clone(), Arc::new(session));
        token
    }

    fn remove(&self, token: &str) -> Option<Arc<Session>> {
        self.0.lock().expect("sessions lock").remove(token)
    }
}

/// 244 random bits (two version-4 UUIDs, from the system's generator), as hex.
fn random_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

/// The viewer of a read-only page.
pub(crate) struct Reader(Option<Arc<Session>>);

impl Reader {
    pub(crate) fn as_viewer(&self) -> html::Viewer<'_> {
        html::Viewer {
            role: self.0.as_deref().map(|s| s.role.as_str()),
        }
    }

    /// The token the page's forms carry (empty when nobody is signed in: the action is then
    /// refused for want of credentials).
    pub(crate) fn csrf(&self) -> &str {
        self.0.as_deref().map_or("", |s| s.csrf.as_str())
    }
}

/// A page's handler takes its viewer as an argument; the page is refused (401) to a
/// viewer who may not read it.
impl axum::extract::FromRequestParts<Arc<Web>> for Reader {
    type Rejection = WebError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        web: &Arc<Web>,
    ) -> Result<Self, Self::Rejection> {
        reader(web, &parts.headers)
    }
}

/// Who views a read-only page: anyone on loopback, a signed-in role elsewhere.
fn reader(web: &Web, headers: &HeaderMap) -> Result<Reader, WebError> {
    let session = cookie(headers).and_then(|token| web.sessions.get(token));
    if session.is_none() && !web.open_reads {
        return Err(WebError::Unauthorized(
            "this server does not listen on loopback: sign in to see its pages".to_owned(),
        ));
    }
    Ok(Reader(session))
}

/// An admin allowed to carry out an action, with a connection pool of its role.
pub(crate) struct Actor {
    pub(crate) role: String,
    pub(crate) pool: PgPool,
}

/// The host the request was sent to (HTTP/1.1's Host header, or h2's authority).
fn host<'a>(headers: &'a HeaderMap, uri: &'a Uri) -> Option<&'a str> {
    headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
}

/// Whether a state-changing request comes from this server's own pages (or from a
/// program that is no browser: those send neither header).
fn same_origin(headers: &HeaderMap, uri: &Uri) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    match headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
        None => true,
        Some(origin) => host(headers, uri).is_some_and(|host| {
            origin == format!("http://{host}") || origin == format!("https://{host}")
        }),
    }
}

/// 403 for a state-changing request that [`same_origin`] says comes from another site.
fn refuse_cross_site(headers: &HeaderMap, uri: &Uri) -> Result<(), WebError> {
    if same_origin(headers, uri) {
        Ok(())
    } else {
        Err(WebError::Forbidden(
            "a request from another site was refused".to_owned(),
        ))
    }
}

/// The admin behind a state-changing request, or why there is none.
pub(crate) async fn admin(
    web: &Web,
    headers: &HeaderMap,
    uri: &Uri,
    csrf: &str,
) -> Result<Actor, WebError> {
    refuse_cross_site(headers, uri)?;
    if let Some(session) = cookie(headers).and_then(|token| web.sessions.get(token)) {
        if csrf != session.csrf {
            return Err(WebError::Forbidden(
                "the form's token is not this session's: reload the page and try again".to_owned(),
            ));
        }
        return admit(&session.role, session.admin, session.pool.clone());
    }
    if let Some((role, password)) = basic_credentials(headers)? {
        let (pool, is_admin) = sign_in(web, &role, &password).await?;
        return admit(&role, is_admin, pool);
    }
    Err(WebError::Unauthorized(
        "this action needs the credentials of a member of eventstore_admin".to_owned(),
    ))
}

fn admit(role: &str, is_admin: bool, pool: PgPool) -> Result<Actor, WebError> {
    if is_admin {
        Ok(Actor {
            role: role.to_owned(),
            pool,
        })
    } else {
        Err(WebError::Forbidden(format!(
            "role {role:?} is not a member of eventstore_admin"
        )))
    }
}

/// `Authorization: Basic` credentials, if the request has them.
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, WebError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(crate::callers::basic_credentials)
        .map(Some)
        .ok_or_else(|| {
            WebError::Unauthorized("the Authorization header is not Basic credentials".into())
        })
}

/// Connects as `role` with `password` to the store's database: PostgreSQL checks them.
async fn sign_in(web: &Web, role: &str, password: &str) -> Result<(PgPool, bool), WebError> {
    let pool = connect_as(
        &web.store,
        role,
        password,
        "eventstore serve: signed-in role",
        2,
    )
    .await
    .map_err(|error| match error {
        SignInError::Refused => WebError::Unauthorized(
            "sign-in failed: wrong role name or password, or the role may not log in".to_owned(),
        ),
        SignInError::Database(error) => WebError::from(error),
    })?;
    let is_admin: Option<bool> = sqlx::query_scalar(IS_ADMIN_SQL).fetch_one(&pool).await?;
    Ok((pool, is_admin.unwrap_or(false)))
}

#[derive(Deserialize)]
pub(crate) struct LoginQuery {
    next: Option<String>,
}

/// Where to go after signing in: a page of this UI, nothing else.
fn next_page(next: Option<&str>) -> &str {
    match next {
        Some(next) if next.starts_with("/ui") && !next.starts_with("//") => next,
        _ => "/ui",
    }
}

fn login_form(next: &str, error: Option<&str>) -> String {
    let mut body = String::new();
    if let Some(error) = error {
        body.push_str(&format!(
            "<p class=\"error\" id=\"error\">{}</p>",
            esc(error)
        ));
    }
    body.push_str(&format!(
        "<form method=\"post\" action=\"/ui/login\" class=\"login\">\
         <input type=\"hidden\" name=\"next\" value=\"{}\">\
         <label>PostgreSQL role <input name=\"role\" id=\"role\" autocomplete=\"username\" required></label>\
         <label>Password <input type=\"password\" name=\"password\" id=\"password\" autocomplete=\"current-password\"></label>\
         <button type=\"submit\" id=\"sign-in\">Sign in</button></form>\
         <p class=\"hint\">PostgreSQL checks the role and password. Replaying, dropping and \
         rebuilding need a member of <code>eventstore_admin</code>.</p>",
        esc(next)
    ));
    body
}

pub(crate) async fn login_page(Query(q): Query<LoginQuery>) -> Response {
    html::page(
        Section::SignIn,
        "Sign in",
        &html::Viewer { role: None },
        &login_form(next_page(q.next.as_deref()), None),
    )
}

#[derive(Deserialize)]
pub(crate) struct LoginForm {
    role: String,
    #[serde(default)]
    password: String,
    next: Option<String>,
}

pub(crate) async fn login(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    uri: Uri,
    Form(form): Form<LoginForm>,
) -> Result<Response, WebError> {
    refuse_cross_site(&headers, &uri)?;
    let next = next_page(form.next.as_deref()).to_owned();
    let (pool, admin) = match sign_in(&web, &form.role, &form.password).await {
        Ok(signed_in) => signed_in,
        Err(WebError::Unauthorized(message)) => {
            let mut response = html::page(
                Section::SignIn,
                "Sign in",
                &html::Viewer { role: None },
                &login_form(&next, Some(&message)),
            );
            *response.status_mut() = axum::http::StatusCode::UNAUTHORIZED;
            return Ok(response);
        }
        Err(error) => return Err(error),
    };
    tracing::info!(role = %form.role, admin, "signed in to the stream browser");
    let token = web.sessions.insert(Session {
        role: form.role,
        admin,
        pool,
        csrf: random_token(),
        expires: Instant::now() + SESSION_LIFETIME,
    });
    let cookie = format!(
        "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_LIFETIME.as_secs(),
        if web.tls { "; Secure" } else { "" }
    );
    let mut response = Redirect::to(&next).into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&cookie).expect("a cookie of hex and ASCII"),
    );
    Ok(response)
}

pub(crate) async fn logout(
    State(web): State<Arc<Web>>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, WebError> {
    refuse_cross_site(&headers, &uri)?;
    if let Some(session) = cookie(&headers).and_then(|token| web.sessions.remove(token)) {
        session.pool.close().await;
    }
    let mut response = Redirect::to("/ui").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_str(&format!(
            "{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
        ))
        .expect("an ASCII cookie"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn cross_site_requests_are_told_apart() {
        let uri: Uri = "/ui/group/replay".parse().unwrap();
        assert!(same_origin(&headers(&[]), &uri));
        assert!(same_origin(
            &headers(&[("sec-fetch-site", "same-origin")]),
            &uri
        ));
        assert!(!same_origin(
            &headers(&[("sec-fetch-site", "cross-site")]),
            &uri
        ));
        assert!(!same_origin(
            &headers(&[("sec-fetch-site", "same-site")]),
            &uri
        ));
        assert!(same_origin(
            &headers(&[
                ("host", "127.0.0.1:2113"),
                ("origin", "http://127.0.0.1:2113")
            ]),
            &uri
        ));
        assert!(!same_origin(
            &headers(&[
                ("host", "127.0.0.1:2113"),
                ("origin", "http://evil.example")
            ]),
            &uri
        ));
    }

    #[test]
    fn reads_the_session_cookie_and_basic_credentials() {
        let map = headers(&[("cookie", "a=b; eventstore_session=abc; c=d")]);
        assert_eq!(cookie(&map), Some("abc"));
        assert_eq!(cookie(&headers(&[("cookie", "a=b")])), None);
        let map = headers(&[("authorization", "Basic YWRtaW46czNjcjN0Og==")]);
        assert_eq!(
            basic_credentials(&map).unwrap(),
            Some(("admin".to_owned(), "s3cr3t:".to_owned()))
        );
        assert!(basic_credentials(&headers(&[("authorization", "Bearer x")])).is_err());
        assert_eq!(basic_credentials(&headers(&[])).unwrap(), None);
    }

    #[test]
    fn goes_back_only_to_its_own_pages() {
        assert_eq!(next_page(Some("/ui/group?name=a")), "/ui/group?name=a");
        assert_eq!(next_page(Some("https://evil.example/")), "/ui");
        assert_eq!(next_page(Some("//evil.example/ui")), "/ui");
        assert_eq!(next_page(None), "/ui");
    }
}
