//! The stream browser, `/metrics` and `/health` of `eventstore serve`, through real HTTP
//! requests and a real headless Chromium driven over WebDriver (Debian's `chromium` and
//! `chromedriver`, which the test command installs).
//!
//! Sign-in is checked by PostgreSQL itself, for roles made by [`role_with_password`]
//! (the test cluster trusts loopback connections of every other role).
//!
//! The browser test saves a screenshot of each page it visits to
//! `target/test-output/browser/` (see [`SCREENSHOTS`]).

use std::time::{Duration, Instant};

use fantoccini::{Client as Browser, ClientBuilder, Locator};
use pg_eventstore_tests::{eventstore_bin, role_with_password, settled, Served, TestDb, PASSWORD};
use reqwest::header;
use serde_json::json;
use sqlx::{Connection, PgPool, Row};
use uuid::Uuid;

/// How long a test waits for something it expects, generous for a loaded 2-core machine.
const PATIENCE: Duration = Duration::from_secs(60);

/// Where the browser test saves its screenshots, relative to the workspace.
const SCREENSHOTS: &str = "target/test-output/browser";

async fn serve_migrated() -> (TestDb, Served) {
    let db = TestDb::new(4).await;
    pg_eventstore_tests::eventstore_migrate(&db.url()).await;
    let served = Served::start(&db.url()).await;
    (db, served)
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(PATIENCE)
        .build()
        .expect("an HTTP client")
}

async fn get(url: &str) -> (u16, String) {
    let response = http().get(url).send().await.expect("the server answers");
    let status = response.status().as_u16();
    (status, response.text().await.expect("a body"))
}

async fn append(pool: &PgPool, stream: &str, events: serde_json::Value) -> i64 {
    sqlx::query_scalar("SELECT last_position FROM eventstore.append($1, $2)")
        .bind(stream)
        .bind(events)
        .fetch_one(pool)
        .await
        .expect("append")
}

async fn parked_count(pool: &PgPool, group: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM eventstore.parked($1)")
        .bind(group)
        .fetch_one(pool)
        .await
        .expect("parked")
}

/// A group `group` over category `category` with one parked event, at the returned position.
async fn group_with_a_parked_event(pool: &PgPool, group: &str, category: &str) -> i64 {
    sqlx::query("SELECT eventstore.create_group($1, ARRAY[$2])")
        .bind(group)
        .bind(category)
        .execute(pool)
        .await
        .expect("create_group");
    let position = append(
        pool,
        &format!("{category}-1"),
        json!([{"type": "payment-failed", "data": {"reason": "card declined"}}]),
    )
    .await;
    settled(pool).await;
    let fetched: Vec<i64> =
        sqlx::query_scalar("SELECT position FROM eventstore.fetch($1, 'worker-1', 10)")
            .bind(group)
            .fetch_all(pool)
            .await
            .expect("fetch");
    assert_eq!(fetched, vec![position]);
    sqlx::query(
        "SELECT eventstore.park($1, 'worker-1', ARRAY[$2], 'the card processor refused it')",
    )
    .bind(group)
    .bind(position)
    .execute(pool)
    .await
    .expect("park");
    assert_eq!(parked_count(pool, group).await, 1);
    position
}

#[tokio::test]
async fn pages_escape_event_data_link_correlations_and_show_binary_data_as_hex() {
    let (db, served) = serve_migrated().await;
    let base = served.http_url();
    let cause = Uuid::new_v4();
    let correlation = Uuid::new_v4();
    append(
        &db.pool,
        "order-hostile",
        json!([
            {"type": "order-placed", "id": cause,
             "data": {"note": "<script>alert(1)</script><img src=x onerror=alert(2)>", "quote": "\"'&"},
             "metadata": {"$correlationId": correlation}},
            {"type": "order-paid", "data": {"amount": 5},
             "metadata": {"$correlationId": correlation, "$causationId": cause}}
        ]),
    )
    .await;
    // Binary data, as an EventStoreDB client appends it.
    let client = kurrentdb::Client::new(served.esdb_url.parse().expect("a connection string"))
        .expect("a client");
    client
        .append_to_stream(
            "blob-1",
            &Default::default(),
            kurrentdb::EventData::binary(
                "blob-written",
                bytes::Bytes::from_static(&[0, 0xff, 0x10, 0x7f]),
            ),
        )
        .await
        .expect("binary append");

    let response = http()
        .get(format!("{base}/ui/stream?name=order-hostile"))
        .send()
        .await
        .expect("the stream page");
    assert_eq!(response.status().as_u16(), 200);
    let policy = response
        .headers()
        .get(header::CONTENT_SECURITY_POLICY)
        .expect("a content security policy")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(policy.contains("script-src 'self'"), "{policy}");
    let page = response.text().await.unwrap();
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;"),
        "the data is shown as text: {page}"
    );
    assert!(
        !page.contains("<script>alert"),
        "no event data becomes markup"
    );
    assert!(!page.contains("<img src=x"), "no event data becomes markup");
    assert!(page.contains("&quot;&#39;&amp;"), "quotes are escaped too");
    assert!(
        page.contains(&format!("/ui/event?id={cause}")),
        "the causation links to its event"
    );
    assert!(
        page.contains(&format!("/ui/correlation?id={correlation}")),
        "the correlation links to its events"
    );

    let (status, page) = get(&format!("{base}/ui/stream?name=blob-1")).await;
    assert_eq!(status, 200);
    assert!(page.contains("00 ff 10 7f"), "binary data as hex: {page}");
    assert!(page.contains("application/octet-stream"));

    let (status, page) = get(&format!("{base}/ui/correlation?id={correlation}")).await;
    assert_eq!(status, 200);
    assert_eq!(
        page.matches("/ui/stream?name=order-hostile&amp;").count(),
        2,
        "{page}"
    );
    let (status, page) = get(&format!("{base}/ui/event?id={cause}")).await;
    assert_eq!(status, 200);
    assert!(page.contains("order-placed"));

    // The log and search pages escape too.
    for path in [
        "/ui/log",
        "/ui/streams",
        "/ui/streams?prefix=order-",
        "/ui/streams?category=order",
    ] {
        let (status, page) = get(&format!("{base}{path}")).await;
        assert_eq!(status, 200, "{path}");
        assert!(page.contains("order-hostile"), "{path} lists the stream");
        assert!(!page.contains("<script>alert"), "{path} escapes");
    }
    let (_, page) = get(&format!("{base}/ui/streams?prefix=%3Cscript%3E")).await;
    assert!(
        page.contains("value=\"&lt;script&gt;\""),
        "the search box escapes"
    );

    // Bad input is a clear 4xx, not a failure.
    for (path, status) in [
        ("/ui/event?id=not-a-uuid", 400),
        (&*format!("/ui/event?id={}", Uuid::new_v4()), 404),
        ("/ui/stream?name=nothing-here", 404),
        ("/ui/stream?name=order-hostile&dir=sideways", 400),
        ("/ui/log?count=0", 400),
        ("/ui/log?count=many", 400),
        ("/ui/group?name=nope", 404),
        ("/ui/no-such-page", 404),
    ] {
        assert_eq!(get(&format!("{base}{path}")).await.0, status, "{path}");
    }
    served.stop().await;
    db.drop_database().await;
}

fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{name} is not a number"),
        })
}

async fn scrape(base: &str) -> prometheus_parse::Scrape {
    let (status, text) = get(&format!("{base}/metrics")).await;
    assert_eq!(status, 200, "{text}");
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("the Prometheus text format")
}

#[tokio::test]
async fn metrics_parse_and_match_the_health_view_groups_and_projections() {
    let (db, served) = serve_migrated().await;
    let base = served.http_url();
    for i in 0..5 {
        append(
            &db.pool,
            &format!("metric-{i}"),
            json!([{"type": "a", "data": {}}, {"type": "b", "data": {}}]),
        )
        .await;
    }
    group_with_a_parked_event(&db.pool, "billing", "payment").await;
    sqlx::query("INSERT INTO projections.checkpoints (name, position, events_applied) VALUES ('reporting', 3, 3)")
        .execute(&db.pool)
        .await
        .expect("a checkpoint");
    // A gRPC call, to be counted.
    let client = kurrentdb::Client::new(served.esdb_url.parse().unwrap()).unwrap();
    let mut read = client
        .read_stream("metric-0", &Default::default())
        .await
        .expect("a read");
    while read.next().await.expect("read").is_some() {}
    assert_eq!(
        get(&format!("{base}/health")).await,
        (200, "ok\n".to_owned())
    );

    // Another test's transaction elsewhere in the cluster can hold the head back between
    // two reads: compare a scrape with the health view read right after it, until both
    // were taken while nothing moved. A request is counted when the server has finished its
    // response, which can be just after the client has read it: wait for those too.
    let read_call = [
        ("protocol", "grpc"),
        ("method", "/event_store.client.streams.Streams/Read"),
        ("code", "Ok"),
    ];
    let health_call = [("protocol", "http"), ("method", "/health"), ("code", "200")];
    let deadline = Instant::now() + PATIENCE;
    let scraped = loop {
        let scraped = scrape(&base).await;
        let health = sqlx::query(
            "SELECT streams, events, head_position, held_back_events FROM eventstore.health()",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        let same = ["streams", "events", "head_position", "held_back_events"]
            .iter()
            .all(|column| {
                sample(&scraped, &format!("eventstore_{column}"), &[])
                    == Some(health.get::<i64, _>(*column) as f64)
            });
        let counted = sample(&scraped, "eventstore_server_requests_total", &read_call).is_some()
            && sample(&scraped, "eventstore_server_requests_total", &health_call).is_some();
        if same && counted {
            break scraped;
        }
        assert!(
            Instant::now() < deadline,
            "/metrics never matched eventstore.health()"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(sample(&scraped, "eventstore_streams", &[]), Some(6.0));
    assert_eq!(sample(&scraped, "eventstore_events", &[]), Some(11.0));
    assert!(sample(&scraped, "eventstore_oldest_transaction_age_seconds", &[]).is_some());
    assert!(sample(&scraped, "eventstore_appended_events_total", &[]).is_some());

    let group: (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT position, in_flight, parked, lag FROM eventstore.groups WHERE group_name = 'billing'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let billing = [("group", "billing")];
    assert_eq!(
        sample(&scraped, "eventstore_group_position", &billing),
        Some(group.0 as f64)
    );
    assert_eq!(
        sample(&scraped, "eventstore_group_in_flight", &billing),
        Some(group.1 as f64)
    );
    assert_eq!(
        sample(&scraped, "eventstore_group_parked", &billing),
        Some(1.0)
    );
    assert_eq!(
        sample(&scraped, "eventstore_group_lag", &billing),
        Some(group.3 as f64)
    );

    let reporting = [("projection", "reporting")];
    assert_eq!(
        sample(&scraped, "eventstore_projection_position", &reporting),
        Some(3.0)
    );
    assert_eq!(
        sample(&scraped, "eventstore_projection_events_applied", &reporting),
        Some(3.0)
    );
    assert_eq!(
        sample(&scraped, "eventstore_projection_running", &reporting),
        Some(0.0)
    );
    assert_eq!(
        sample(&scraped, "eventstore_projection_failed", &reporting),
        Some(0.0)
    );
    assert!(sample(&scraped, "eventstore_projection_events_behind", &reporting).unwrap() >= 1.0);

    // The server's own requests: the gRPC read, and the HTTP ones.
    assert_eq!(
        sample(&scraped, "eventstore_server_requests_total", &read_call),
        Some(1.0)
    );
    assert_eq!(
        sample(&scraped, "eventstore_server_requests_total", &health_call),
        Some(1.0)
    );
    let durations = scraped
        .samples
        .iter()
        .find(|s| {
            s.metric == "eventstore_server_request_duration_seconds"
                && s.labels.get("method") == Some("/event_store.client.streams.Streams/Read")
        })
        .expect("the read's duration");
    match &durations.value {
        prometheus_parse::Value::Histogram(buckets) => {
            assert_eq!(buckets.last().map(|b| b.count), Some(1.0), "{buckets:?}")
        }
        other => panic!("not a histogram: {other:?}"),
    }
    assert!(sample(&scraped, "eventstore_served_events_total", &[]).unwrap() >= 2.0);

    // Without the database: /health says 503, and so does /metrics.
    drop(client);
    let stopped = served.stop().await;
    assert!(stopped.success(), "{stopped}");
    let served = Served::start(&db.url()).await;
    let base = served.http_url();
    assert_eq!(get(&format!("{base}/health")).await.0, 200);
    let mut admin = sqlx::PgConnection::connect(&std::env::var("DATABASE_URL").unwrap())
        .await
        .unwrap();
    sqlx::query(&format!(
        "ALTER DATABASE {} ALLOW_CONNECTIONS false",
        db.name
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&db.name)
        .execute(&mut admin)
        .await
        .unwrap();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, _) = get(&format!("{base}/health")).await;
        if status == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "/health kept answering {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(get(&format!("{base}/metrics")).await.0, 503);
    served.stop().await;
    admin.close().await.unwrap();
    db.drop_database().await;
}

/// Posts `form` to `path`, with extra headers.
async fn post(
    base: &str,
    path: &str,
    form: &[(&str, &str)],
    headers: &[(&str, String)],
) -> reqwest::Response {
    let mut request = http().post(format!("{base}{path}")).form(form);
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    request.send().await.expect("the server answers")
}

fn basic(role: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{role}:{password}"))
    )
}

/// The value of the hidden input `name` on a page.
fn hidden(page: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = page
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} on {page}"))
        + marker.len();
    page[start..start + page[start..].find('"').unwrap()].to_owned()
}

#[tokio::test]
async fn actions_need_an_admin_a_checked_password_and_a_form_of_this_site() {
    let (db, served) = serve_migrated().await;
    let base = served.http_url();
    let admin = role_with_password(&db, "eventstore_admin").await;
    let reader = role_with_password(&db, "eventstore_reader").await;
    let position = group_with_a_parked_event(&db.pool, "billing", "payment").await;
    let replay = |csrf: &str| {
        vec![
            ("group", "billing".to_owned()),
            ("positions", position.to_string()),
            ("csrf", csrf.to_owned()),
        ]
    };
    let form =
        |fields: &[(&'static str, String)]| -> Vec<(&'static str, String)> { fields.to_vec() };
    let as_pairs = |fields: &[(&'static str, String)]| -> Vec<(String, String)> {
        fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    };
    let send = |headers: Vec<(&'static str, String)>, fields: Vec<(&'static str, String)>| {
        let base = base.clone();
        async move {
            let pairs = as_pairs(&fields);
            let pairs: Vec<(&str, &str)> = pairs
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            post(&base, "/ui/group/replay", &pairs, &headers).await
        }
    };

    // No credentials, a reader's, a wrong password, another site: refused, nothing changes.
    let refused = [
        (vec![], 401),
        (vec![("authorization", basic(&reader, PASSWORD))], 403),
        (vec![("authorization", basic(&admin, "wrong"))], 401),
        (
            vec![("authorization", basic("nobody_at_all", PASSWORD))],
            401,
        ),
        (
            vec![
                ("authorization", basic(&admin, PASSWORD)),
                ("sec-fetch-site", "cross-site".to_owned()),
            ],
            403,
        ),
        (
            vec![
                ("authorization", basic(&admin, PASSWORD)),
                ("origin", "http://evil.example".to_owned()),
            ],
            403,
        ),
    ];
    for (headers, status) in refused {
        let response = send(headers.clone(), form(&replay(""))).await;
        assert_eq!(response.status().as_u16(), status, "{headers:?}");
        assert_eq!(
            parked_count(&db.pool, "billing").await,
            1,
            "{headers:?} changed nothing"
        );
    }

    // A wrong password at the sign-in form: 401, no cookie.
    let response = post(
        &base,
        "/ui/login",
        &[("role", &admin), ("password", "wrong")],
        &[],
    )
    .await;
    assert_eq!(response.status().as_u16(), 401);
    assert!(response.headers().get(header::SET_COOKIE).is_none());

    // Signed in: the form's token must be the session's.
    let response = post(
        &base,
        "/ui/login",
        &[
            ("role", &admin),
            ("password", PASSWORD),
            ("next", "/ui/group?name=billing"),
        ],
        &[],
    )
    .await;
    assert_eq!(response.status().as_u16(), 303);
    let cookie = response
        .headers()
        .get(header::SET_COOKIE)
        .expect("a session cookie")
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap().to_owned();
    let page = http()
        .get(format!("{base}/ui/group?name=billing"))
        .header(header::COOKIE, &session)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(&format!("signed in as <b>{admin}</b>")),
        "{page}"
    );
    let csrf = hidden(&page, "csrf");
    assert_eq!(csrf.len(), 64);
    let response = send(vec![("cookie", session.clone())], form(&replay("forged"))).await;
    assert_eq!(response.status().as_u16(), 403);
    assert_eq!(parked_count(&db.pool, "billing").await, 1);
    let response = send(vec![("cookie", session.clone())], form(&replay(&csrf))).await;
    assert_eq!(
        response.status().as_u16(),
        303,
        "{:?}",
        response.text().await
    );
    assert_eq!(parked_count(&db.pool, "billing").await, 0, "replayed");
    let back: Vec<i64> =
        sqlx::query_scalar("SELECT position FROM eventstore.fetch('billing', 'worker-2', 10)")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        back,
        vec![position],
        "the replayed event is delivered again"
    );

    // Park it again and drop it with Basic credentials, as a script would.
    sqlx::query("SELECT eventstore.park('billing', 'worker-2', ARRAY[$1], 'again')")
        .bind(position)
        .execute(&db.pool)
        .await
        .unwrap();
    let response = post(
        &base,
        "/ui/group/drop",
        &[("group", "billing"), ("positions", "")],
        &[("authorization", basic(&admin, PASSWORD))],
    )
    .await;
    assert_eq!(response.status().as_u16(), 303);
    assert_eq!(parked_count(&db.pool, "billing").await, 0, "dropped");
    let location = response.headers()[header::LOCATION]
        .to_str()
        .unwrap()
        .to_owned();
    let (_, page) = get(&format!("{base}{location}")).await;
    assert!(page.contains("dropped 1 parked event(s)"), "{page}");

    // Signing out ends the session.
    let response = post(&base, "/ui/logout", &[], &[("cookie", session.clone())]).await;
    assert_eq!(response.status().as_u16(), 303);
    let response = send(vec![("cookie", session)], form(&replay(&csrf))).await;
    assert_eq!(response.status().as_u16(), 401);

    served.stop().await;
    for role in [admin, reader] {
        sqlx::query(&format!("DROP ROLE {role}"))
            .execute(&db.pool)
            .await
            .unwrap();
    }
    db.drop_database().await;
}

/// chromedriver on a free port, stopped when dropped.
struct Driver {
    child: std::process::Child,
    url: String,
    _profile: TempDir,
}

/// A folder removed when dropped.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn browser() -> (Driver, Browser) {
    let port = free_port();
    let child = std::process::Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("chromedriver runs (the test command installs Debian's chromium-driver)");
    let profile =
        TempDir(std::env::temp_dir().join(format!("eventstore-chromium-{}", Uuid::new_v4())));
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _profile: profile,
    };
    let deadline = Instant::now() + PATIENCE;
    while http()
        .get(format!("{}/status", driver.url))
        .send()
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "chromedriver never listened");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1280,1000",
                format!("--user-data-dir={}", driver._profile.0.display()),
            ]
        }),
    );
    let browser = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a Chromium session");
    (driver, browser)
}

/// Waits until the text of the first element matching `css` contains `text`.
async fn wait_for_text(browser: &Browser, css: &str, text: &str) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(element) = browser.find(Locator::Css(css)).await {
            if let Ok(shown) = element.text().await {
                if shown.contains(text) {
                    return shown;
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "{css} never showed {text:?}; the page: {}",
            browser.source().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Clicks the first element matching `css`.
async fn click(browser: &Browser, css: &str) {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|error| panic!("no {css} to click: {error}"))
        .click()
        .await
        .unwrap_or_else(|error| panic!("clicking {css}: {error}"));
}

/// Types `text` into the first element matching `css`.
async fn type_into(browser: &Browser, css: &str, text: &str) {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|error| panic!("no {css} to type into: {error}"))
        .send_keys(text)
        .await
        .unwrap_or_else(|error| panic!("typing into {css}: {error}"));
}

async fn screenshot(browser: &Browser, name: &str) {
    let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(SCREENSHOTS);
    std::fs::create_dir_all(&folder).expect("the screenshot folder");
    let png = browser.screenshot().await.expect("a screenshot");
    let file = folder.join(format!("{name}.png"));
    std::fs::write(&file, png).expect("write the screenshot");
    println!("screenshot: {SCREENSHOTS}/{name}.png");
}

#[tokio::test]
async fn a_browser_browses_the_store_follows_the_live_log_and_replays_as_admin() {
    let (db, served) = serve_migrated().await;
    let base = served.http_url();
    let admin = role_with_password(&db, "eventstore_admin").await;
    // The demo's workload.
    let status = tokio::process::Command::new(eventstore_bin())
        .args(["generate", "--users", "20", "--orders", "60"])
        .env("DATABASE_URL", db.url())
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .expect("eventstore generate runs");
    assert!(status.success());
    let parked_at = group_with_a_parked_event(&db.pool, "billing", "payment").await;
    settled(&db.pool).await;
    let (driver, browser) = browser().await;

    // The dashboard.
    browser.goto(&format!("{base}/ui")).await.unwrap();
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM eventstore.events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let figures = wait_for_text(&browser, "dl.figures", "Events").await;
    let shown = events.to_string();
    let with_commas = shown
        .as_bytes()
        .rchunks(3)
        .rev()
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(",");
    assert!(
        figures.contains(&with_commas),
        "{figures} shows {events} events"
    );
    screenshot(&browser, "dashboard").await;

    // Search a prefix, open a stream of the workload, see its events with their data.
    browser.goto(&format!("{base}/ui/streams")).await.unwrap();
    screenshot(&browser, "streams").await;
    type_into(&browser, "#prefix", "user-").await;
    click(&browser, "#search").await;
    let listed = wait_for_text(&browser, "h2", "Streams starting with").await;
    assert!(listed.contains("user-"));
    let links = browser
        .find_all(Locator::Css("#streams tbody a"))
        .await
        .unwrap();
    assert!(!links.is_empty(), "the search found user streams");
    for link in &links {
        assert!(link.text().await.unwrap().starts_with("user-"));
    }
    screenshot(&browser, "stream-search").await;
    let stream = links[0].text().await.unwrap();
    links[0].click().await.unwrap();
    wait_for_text(&browser, "h1", &stream).await;
    let first: serde_json::Value =
        sqlx::query_scalar("SELECT data FROM eventstore.events WHERE stream = $1 AND version = 0")
            .bind(&stream)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let username = first["username"]
        .as_str()
        .expect("user-created has a username");
    let data = wait_for_text(&browser, "article[data-version=\"0\"] pre.data", username).await;
    assert!(data.contains("\"username\""), "{data}");
    let versions: i64 =
        sqlx::query_scalar("SELECT count(*) FROM eventstore.events WHERE stream = $1")
            .bind(&stream)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        browser
            .find_all(Locator::Css("article.event"))
            .await
            .unwrap()
            .len() as i64,
        versions.min(20)
    );
    screenshot(&browser, "stream").await;

    // The live log: a hostile event appended now appears, as text.
    browser.goto(&format!("{base}/ui/log")).await.unwrap();
    click(&browser, "#live").await;
    wait_for_text(&browser, "#live-status", "live: 0 new").await;
    let hostile = format!("hostile-{}", Uuid::new_v4().simple());
    append(
        &db.pool,
        &hostile,
        json!([{"type": "note-taken",
                "data": {"html": "<script>window.pwned = 1</script><img src=x onerror=\"window.pwned = 2\">"}}]),
    )
    .await;
    let row = wait_for_text(&browser, "#log tbody tr.arrived", &hostile).await;
    assert!(
        row.contains("<script>window.pwned = 1</script>"),
        "shown as text: {row}"
    );
    assert_eq!(
        browser
            .execute("return typeof window.pwned;", vec![])
            .await
            .unwrap(),
        json!("undefined"),
        "nothing in the event ran"
    );
    wait_for_text(&browser, "#live-status", "live: 1 new").await;
    screenshot(&browser, "log-live").await;
    browser
        .goto(&format!("{base}/ui/stream?name={hostile}"))
        .await
        .unwrap();
    let data = wait_for_text(&browser, "pre.data", "<img src=x").await;
    assert!(data.contains("<script>window.pwned = 1</script>"));
    assert_eq!(
        browser
            .execute("return typeof window.pwned;", vec![])
            .await
            .unwrap(),
        json!("undefined")
    );
    assert!(browser
        .find_all(Locator::Css("main img"))
        .await
        .unwrap()
        .is_empty());
    screenshot(&browser, "hostile-event").await;

    // Groups: replaying without credentials is refused; signed in as admin, it works.
    browser.goto(&format!("{base}/ui/groups")).await.unwrap();
    wait_for_text(&browser, "#groups", "billing").await;
    screenshot(&browser, "groups").await;
    browser
        .goto(&format!("{base}/ui/group?name=billing"))
        .await
        .unwrap();
    wait_for_text(&browser, "#parked", "the card processor refused it").await;
    screenshot(&browser, "group").await;
    click(&browser, "#parked button.replay").await;
    wait_for_text(
        &browser,
        "#error",
        "needs the credentials of a member of eventstore_admin",
    )
    .await;
    screenshot(&browser, "replay-refused").await;
    assert_eq!(
        parked_count(&db.pool, "billing").await,
        1,
        "nothing was replayed"
    );

    browser
        .goto(&format!("{base}/ui/login?next=/ui/group?name=billing"))
        .await
        .unwrap();
    type_into(&browser, "#role", &admin).await;
    type_into(&browser, "#password", PASSWORD).await;
    screenshot(&browser, "sign-in").await;
    click(&browser, "#sign-in").await;
    wait_for_text(&browser, "header .who", &admin).await;
    wait_for_text(&browser, "#parked", &parked_at.to_string()).await;
    click(&browser, "#parked button.replay").await;
    wait_for_text(&browser, "#notice", "replayed 1 parked event(s)").await;
    assert_eq!(parked_count(&db.pool, "billing").await, 0, "replayed");
    screenshot(&browser, "replayed").await;

    // Projections: the shop projection, rebuilt from the page as admin.
    sqlx::query(
        "INSERT INTO projections.checkpoints (name) VALUES ('shop') ON CONFLICT DO NOTHING",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    browser
        .goto(&format!("{base}/ui/projections"))
        .await
        .unwrap();
    wait_for_text(&browser, "#projections", "shop").await;
    click(&browser, "#projections button.rebuild").await;
    let shop_events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM eventstore.events WHERE type = ANY(ARRAY['user-created','user-renamed','user-deactivated','order-placed','order-paid','order-shipped','order-cancelled'])",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    wait_for_text(&browser, "#projections", &format!("rebuilt by {admin}")).await;
    let applied: i64 = sqlx::query_scalar(
        "SELECT events_applied FROM projections.checkpoints WHERE name = 'shop'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(applied, shop_events, "the rebuild applied every shop event");
    let users: i64 = sqlx::query_scalar("SELECT count(*) FROM shop.users")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(users, 20);
    screenshot(&browser, "projections").await;

    browser.close().await.unwrap();
    drop(driver);
    served.stop().await;
    sqlx::query(&format!("DROP ROLE {admin}"))
        .execute(&db.pool)
        .await
        .unwrap();
    db.drop_database().await;
}

#[tokio::test]
async fn without_the_ui_metrics_and_health_stay_and_grpc_goes_on() {
    let db = TestDb::new(4).await;
    let served = Served::start_with(&db.url(), &["--no-ui"]).await;
    let base = served.http_url();
    for path in ["/ui", "/ui/streams", "/ui/log/live", "/"] {
        assert_eq!(get(&format!("{base}{path}")).await.0, 404, "{path}");
    }
    assert_eq!(get(&format!("{base}/health")).await.0, 200);
    assert_eq!(get(&format!("{base}/metrics")).await.0, 200);
    let client = kurrentdb::Client::new(served.esdb_url.parse().unwrap()).unwrap();
    client
        .append_to_stream(
            "order-1",
            &Default::default(),
            kurrentdb::EventData::json("order-placed", &json!({"total": 1}))
                .unwrap()
                .id(Uuid::new_v4()),
        )
        .await
        .expect("gRPC beside HTTP");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM eventstore.events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(stored, 1);
    served.stop().await;
    db.drop_database().await;
}

/// A script may close its end of `serve`'s stdout once it has read what it waited for (the
/// benchmark did, after the first line): the server must go on serving. Here stdout is a
/// pipe closed before the server starts, so that each line it prints meets a broken pipe.
#[tokio::test]
async fn a_server_whose_stdout_is_closed_goes_on_serving() {
    use std::os::fd::{FromRawFd, OwnedFd};
    let db = TestDb::new(2).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port();
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe(2) fills the two descriptors of a new pipe into `fds`.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors are open and owned by nothing else: dropping the read end
    // closes it, and the write end becomes the server's stdout.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    let mut child = tokio::process::Command::new(eventstore_bin())
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("DATABASE_URL", db.url())
        .stdout(std::process::Stdio::from(write))
        .kill_on_drop(true)
        .spawn()
        .expect("eventstore serve starts");
    let base = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    loop {
        if let Ok(response) = http().get(format!("{base}/health")).send().await {
            assert_eq!(response.status().as_u16(), 200, "/health");
            break;
        }
        assert!(
            child.try_wait().expect("the server's status").is_none(),
            "eventstore serve exited when its stdout was closed"
        );
        assert!(started.elapsed() < PATIENCE, "the server never answered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, page) = get(&format!("{base}/ui")).await;
    assert_eq!(status, 200, "{page}");
    assert!(child.try_wait().unwrap().is_none(), "still serving");
    child.kill().await.unwrap();
    db.drop_database().await;
}
