//! How the command prints events and stats.

use pg_eventstore_client::projection::ProjectionStats;
use pg_eventstore_client::{GroupInfo, Health, ParkedEvent, RecordedEvent};
use serde_json::{json, Value};

use crate::Format;

/// Prints one event in `format`.
pub fn print_event(event: &RecordedEvent, format: Format) {
    match format {
        Format::Text => println!(
            "{:>20}  {}@{}  {}  {}  {}",
            event.position,
            event.stream,
            event.version,
            event.event_type,
            event.data.get(),
            event.recorded_at.to_rfc3339()
        ),
        Format::Json => println!(
            "{}",
            json!({
                "position": event.position,
                "stream": event.stream,
                "version": event.version,
                "type": event.event_type,
                "data": event.data,
                "metadata": event.metadata,
                "id": event.id,
                "recorded_at": event.recorded_at,
            })
        ),
    }
}

fn seconds(duration: std::time::Duration) -> String {
    format!("{:.3} s", duration.as_secs_f64())
}

/// `eventstore stats` for people.
pub fn stats_text(stats: &Health, projections: &[ProjectionStats], groups: &[GroupInfo]) -> String {
    let mut out = String::new();
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    line(format!("streams              {}", stats.streams));
    line(format!("events               {}", stats.events));
    line(format!("head position        {}", stats.head_position));
    line(format!(
        "held-back events     {}  (appended by transactions newer than the oldest one running)",
        stats.held_back_events
    ));
    match &stats.oldest_transaction {
        Some(tx) => line(format!(
            "oldest transaction   pid {} ({}, {}, {}) running for {}: {}",
            tx.pid,
            tx.database.as_deref().unwrap_or("-"),
            tx.application_name.as_deref().unwrap_or("-"),
            tx.state.as_deref().unwrap_or("-"),
            seconds(tx.age),
            tx.query.as_deref().unwrap_or("").replace('\n', " ")
        )),
        None => line("oldest transaction   none in flight".to_owned()),
    }
    line(String::new());
    line(format!(
        "{:<16} {:>20} {:>12} {:>10} {:>10}  {:<24} status",
        "projection", "position", "applied", "behind", "lag", "owner"
    ));
    for p in projections {
        let status = match &p.failure {
            Some(_) => format!("FAILED ({} attempts)", p.failures),
            None if p.events_behind == 0 => "caught up".to_owned(),
            None => "catching up".to_owned(),
        };
        line(format!(
            "{:<16} {:>20} {:>12} {:>10} {:>10}  {:<24} {status}",
            p.name,
            p.position,
            p.events_applied,
            p.events_behind,
            seconds(p.lag),
            p.owner.as_deref().unwrap_or("(none)")
        ));
        if let Some(failure) = &p.failure {
            line(format!("  {failure}"));
        }
    }
    if !groups.is_empty() {
        line(String::new());
        out.push_str(&groups_text(groups));
    }
    out
}

/// `eventstore groups` for people.
pub fn groups_text(groups: &[GroupInfo]) -> String {
    let mut out = format!(
        "{:<24} {:>20} {:>10} {:>8} {:>10} {:>9} {:>10}\n",
        "group", "position", "in flight", "parked", "lag", "consumers", "held back"
    );
    for g in groups {
        out.push_str(&format!(
            "{:<24} {:>20} {:>10} {:>8} {:>10} {:>9} {:>10}\n",
            g.name, g.position, g.in_flight, g.parked, g.lag, g.consumers, g.held_back
        ));
    }
    out
}

fn group_json(g: &GroupInfo) -> Value {
    json!({
        "name": g.name,
        "position": g.position,
        "in_flight": g.in_flight,
        "parked": g.parked,
        "lag": g.lag,
        "consumers": g.consumers,
        "held_back": g.held_back,
        "categories": g.settings.categories,
        "event_types": g.settings.event_types,
        "from_position": g.settings.from_position,
        "max_attempts": g.settings.max_attempts,
        "lease_timeout_seconds": g.settings.lease_timeout.as_secs_f64(),
        "ordered_by_stream": g.settings.ordered_by_stream,
    })
}

/// `eventstore groups --format json`.
pub fn groups_json(groups: &[GroupInfo]) -> String {
    Value::Array(groups.iter().map(group_json).collect()).to_string()
}

/// A parked event as JSON.
pub fn parked_json(parked: &ParkedEvent) -> String {
    json!({
        "position": parked.event.position,
        "stream": parked.event.stream,
        "version": parked.event.version,
        "type": parked.event.event_type,
        "id": parked.event.id,
        "attempt": parked.attempt,
        "reason": parked.reason,
        "parked_at": parked.parked_at,
    })
    .to_string()
}

/// `eventstore stats --format json`.
pub fn stats_json(stats: &Health, projections: &[ProjectionStats], groups: &[GroupInfo]) -> String {
    json!({
        "streams": stats.streams,
        "events": stats.events,
        "head_position": stats.head_position,
        "held_back_events": stats.held_back_events,
        "oldest_transaction": stats.oldest_transaction.as_ref().map(|tx| json!({
            "pid": tx.pid,
            "database": tx.database,
            "application_name": tx.application_name,
            "state": tx.state,
            "started_at": tx.started_at,
            "age_seconds": tx.age.as_secs_f64(),
            "query": tx.query,
        })),
        "projections": projections.iter().map(|p| json!({
            "name": p.name,
            "position": p.position,
            "events_applied": p.events_applied,
            "events_behind": p.events_behind,
            "lag_seconds": p.lag.as_secs_f64(),
            "owner": p.owner,
            "updated_at": p.updated_at,
            "failures": p.failures,
            "failure": p.failure.as_ref().map(|f| json!({
                "position": f.position,
                "stream": f.stream,
                "version": f.version,
                "type": f.event_type,
                "id": f.event_id,
                "error": f.message,
            })),
        })).collect::<Vec<_>>(),
        "groups": groups.iter().map(group_json).collect::<Vec<_>>(),
    })
    .to_string()
}
