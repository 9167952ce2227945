//! HTML by hand: escaping, the page layout, and the few formats the pages share.
//!
//! Every value that comes from the store (stream names, types, data, metadata, role names,
//! error messages) goes through [`esc`] or [`attr`] before it reaches a page: event data is
//! user input. The pages load only `/ui/style.css` and `/ui/app.js` from this server, and
//! the content security policy forbids inline scripts, so an escaping bug cannot run code.

use std::fmt::Write as _;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};

/// `text` escaped for an element's content or a quoted attribute value.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `text` percent-encoded for a query string value.
pub fn query(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// A link: `href` is built by the caller from [`query`]-encoded parts; both are escaped.
pub fn link(href: &str, text: &str) -> String {
    format!("<a href=\"{}\">{}</a>", esc(href), esc(text))
}

/// A link to a stream's page.
pub fn stream_link(stream: &str) -> String {
    link(&format!("/ui/stream?name={}", query(stream)), stream)
}

/// The address of a stream's page that starts at `version`, scrolled to it.
pub fn in_stream_href(stream: &str, version: u64) -> String {
    format!(
        "/ui/stream?name={}&dir=backwards&from={version}#v{version}",
        query(stream)
    )
}

/// A link to an event's page.
pub fn event_link(id: &str, text: &str) -> String {
    link(&format!("/ui/event?id={}", query(id)), text)
}

/// A timestamp as RFC 3339 in UTC, to the millisecond.
pub fn time(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A count with thousands separators.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    // A separator goes before every digit with a multiple of three digits after it.
    let offset = digits.len() % 3;
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && i % 3 == offset {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A duration in the largest unit that keeps it readable.
pub fn age(duration: std::time::Duration) -> String {
    let seconds = duration.as_secs_f64();
    if seconds < 1.0 {
        format!("{} ms", duration.as_millis())
    } else if seconds < 120.0 {
        format!("{seconds:.1} s")
    } else if seconds < 7200.0 {
        format!("{:.1} min", seconds / 60.0)
    } else {
        format!("{:.1} h", seconds / 3600.0)
    }
}

/// Bytes as lowercase hex, in groups of two with a line break every 32 bytes.
pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for (i, byte) in bytes.iter().enumerate() {
        if i > 0 {
            out.push(if i % 32 == 0 { '\n' } else { ' ' });
        }
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// JSON text pretty-printed (as it is when it does not parse).
pub fn pretty_json(text: &str) -> String {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|value| serde_json::to_string_pretty(&value).ok())
        .unwrap_or_else(|| text.to_owned())
}

/// Who is signed in, for the page header.
pub struct Viewer<'a> {
    /// The role's name, when signed in.
    pub role: Option<&'a str>,
}

/// The sections of the navigation bar.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// The dashboard.
    Dashboard,
    /// The stream browser.
    Streams,
    /// The global log.
    Log,
    /// Persistent subscription groups.
    Groups,
    /// Projections.
    Projections,
    /// Signing in.
    SignIn,
}

/// A whole page: `title` is escaped here, `body` must be escaped HTML already.
pub fn page(section: Section, title: &str, viewer: &Viewer<'_>, body: &str) -> Response {
    let mut nav = String::new();
    for (which, href, label) in [
        (Section::Dashboard, "/ui", "Dashboard"),
        (Section::Streams, "/ui/streams", "Stream browser"),
        (Section::Log, "/ui/log", "Global log"),
        (Section::Groups, "/ui/groups", "Groups"),
        (Section::Projections, "/ui/projections", "Projections"),
    ] {
        let current = if which == section {
            " aria-current=\"page\""
        } else {
            ""
        };
        let _ = write!(nav, "<a href=\"{href}\"{current}>{label}</a>");
    }
    let who = match viewer.role {
        Some(role) => format!(
            "<form method=\"post\" action=\"/ui/logout\" class=\"who\">signed in as <b>{}</b> \
             <button type=\"submit\">Sign out</button></form>",
            esc(role)
        ),
        None => "<a class=\"who\" href=\"/ui/login\">Sign in</a>".to_owned(),
    };
    let html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · pg_eventstore</title>\
         <link rel=\"stylesheet\" href=\"/ui/style.css\">\
         <script src=\"/ui/app.js\" defer></script></head>\
         <body><header><span class=\"brand\">pg_eventstore</span><nav>{nav}</nav>{who}</header>\
         <main><h1>{title}</h1>{body}</main></body></html>\n",
        title = esc(title),
    );
    html_response(html)
}

/// An HTML response with the headers every page carries.
pub fn html_response(html: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

/// A table: `head` are column titles (plain text), each row's cells are escaped HTML.
pub fn table(id: &str, head: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = format!("<table id=\"{}\"><thead><tr>", esc(id));
    for title in head {
        let _ = write!(out, "<th>{}</th>", esc(title));
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{cell}</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    if rows.is_empty() {
        out.push_str("<p class=\"empty\">Nothing here.</p>");
    }
    out
}

/// A definition list of figures: labels are plain text, values escaped HTML.
pub fn figures(items: &[(&str, String)]) -> String {
    let mut out = String::from("<dl class=\"figures\">");
    for (label, value) in items {
        let _ = write!(out, "<div><dt>{}</dt><dd>{value}</dd></div>", esc(label));
    }
    out.push_str("</dl>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_html_gives_meaning_to() {
        assert_eq!(
            esc(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
        assert_eq!(esc("order-42"), "order-42");
    }

    #[test]
    fn links_encode_and_escape() {
        assert_eq!(
            stream_link("a b&\"<c>"),
            "<a href=\"/ui/stream?name=a+b%26%22%3Cc%3E\">a b&amp;&quot;&lt;c&gt;</a>"
        );
    }

    #[test]
    fn formats() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_000), "1,000");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(hex(&[0, 1, 0xab]), "00 01 ab");
        assert_eq!(hex(&[7; 33]).matches('\n').count(), 1);
        assert_eq!(pretty_json("{\"a\":1}"), "{\n  \"a\": 1\n}");
        assert_eq!(pretty_json("not json"), "not json");
    }
}
