//! The portable form of the store: the extension's SQL contract in plain SQL and PL/pgSQL,
//! for servers where no library can be loaded (managed PostgreSQL), installed by the
//! database's owner without superuser.
//!
//! It is built from the extension's own frozen install script of a release
//! (`extension/sql/released/pg_eventstore--VERSION.sql`), so the two forms share every table,
//! type, view, SQL function, default, comment and grant. Statement by statement:
//! - a declaration of a C function is replaced by the block of `extension/sql/portable.sql`
//!   that names its symbol (`-- portable: replaces <symbol>`); a symbol without a block, or a
//!   block without a symbol, is an error;
//! - `pg_extension_config_dump` calls (the extension's way into `pg_dump`) are dropped: a
//!   plain schema is dumped anyway;
//! - creating the roles needs CREATEROLE, which a database owner may lack: the block that
//!   creates them is replaced (`-- portable: replaces roles`) by one that creates them only
//!   when it may, and each grant to them runs only when they all exist.
//!
//! The result for the current release is committed as `sql/portable/pg_eventstore--VERSION.sql`
//! for psql users (`psql -1 -f`); a test fails when it differs from what this module builds.

use std::collections::BTreeMap;

use crate::{Error, Result, HISTORY_TABLE};

/// The release whose portable install script [`install_script`] builds.
pub const VERSION: &str = "0.5.0";

/// The first release with a portable form: what a portable database's V1 installs. Later
/// releases reach a portable database through their upgrade scripts, as for the extension.
const FIRST_VERSION: &str = "0.5.0";

const RELEASED_0_5_0: &str = include_str!("../../extension/sql/released/pg_eventstore--0.5.0.sql");
const REPLACEMENTS: &str = include_str!("../../extension/sql/portable.sql");

/// The roles of the least-privilege scheme (extension 0.4.0).
const ROLES: [&str; 4] = [
    "eventstore_reader",
    "eventstore_writer",
    "eventstore_consumer",
    "eventstore_admin",
];

/// The portable install script of release [`VERSION`], as committed in `sql/portable/`: the
/// store's migrations exactly as `eventstore migrate --portable` runs them, then their rows
/// in its history table, so that a later `eventstore migrate` takes the database from there.
pub fn install_script() -> Result<String> {
    let mut out = format!(
        "-- pg_eventstore {VERSION}, portable form: plain SQL and PL/pgSQL, for PostgreSQL 15 or\n\
         -- newer where the extension cannot be installed. Built by pg_eventstore_client::portable\n\
         -- from extension/sql/released/ and extension/sql/portable.sql; do not edit\n\
         -- (`eventstore portable-sql` prints it).\n\
         --\n\
         -- Install, as the database's owner (no superuser needed), in one transaction:\n\
         --   psql -v ON_ERROR_STOP=1 -1 -f sql/portable/pg_eventstore--{VERSION}.sql\n\
         -- It is what `eventstore migrate --portable` applies, and it records the same migrations\n\
         -- in {HISTORY_TABLE}, so `eventstore migrate` applies only what later releases add.\n"
    );
    let migrations = crate::migrations::portable_migrations()?;
    for migration in &migrations {
        out.push_str(&format!(
            "\n-- Migration V{}__{}\n",
            migration.version(),
            migration.name()
        ));
        out.push_str(migration.sql().unwrap_or(""));
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    out.push_str(&format!(
        "\n-- The migrations above, as eventstore migrate records them (refinery's history table).\n\
         CREATE TABLE IF NOT EXISTS {HISTORY_TABLE} (\n    version int4 PRIMARY KEY,\n    \
         name varchar(255),\n    applied_on varchar(255),\n    checksum varchar(255)\n);\n\
         INSERT INTO {HISTORY_TABLE} (version, name, applied_on, checksum) VALUES\n"
    ));
    let rows: Vec<String> = migrations
        .iter()
        .map(|m| {
            format!(
                "    ({}, '{}', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), '{}')",
                m.version(),
                m.name(),
                m.checksum()
            )
        })
        .collect();
    out.push_str(&rows.join(",\n"));
    out.push_str(";\n");
    Ok(out)
}

/// The portable install of [`FIRST_VERSION`], what a portable database's V1 runs.
pub(crate) fn first_install_script() -> Result<String> {
    build_install(FIRST_VERSION, RELEASED_0_5_0, REPLACEMENTS)
}

fn build_install(version: &str, released: &str, replacements: &str) -> Result<String> {
    let mut blocks = parse_replacements(replacements)?;
    let mut out = format!(
        "-- pg_eventstore {version}, portable form, built from \
         extension/sql/released/pg_eventstore--{version}.sql\n\
         CREATE SCHEMA eventstore;\n\
         SET search_path = eventstore;\n"
    );
    for statement in split_statements(released) {
        out.push_str(&transform(statement, &mut blocks)?);
    }
    if let Some(unused) = blocks.keys().next() {
        return Err(Error::InvalidArgument(format!(
            "extension/sql/portable.sql replaces {unused}, which release {version} does not declare"
        )));
    }
    out.push_str("\nRESET search_path;\n");
    Ok(out)
}

/// A migration of the store's set as it runs on a portable database: the extension's
/// `CREATE EXTENSION` becomes the portable install, `ALTER EXTENSION ... UPDATE` steps that
/// the first portable release already contains are dropped, and grants to the roles run only
/// when the roles exist.
pub(crate) fn migration_sql(version: i32, sql: &str) -> Result<String> {
    if version == 1 {
        return first_install_script();
    }
    let mut out = String::new();
    let mut blocks = BTreeMap::new();
    for statement in split_statements(sql) {
        let code = strip_comments(statement);
        if code
            .trim_start()
            .to_ascii_uppercase()
            .starts_with("ALTER EXTENSION PG_EVENTSTORE UPDATE")
        {
            // Every update before the first portable release is part of its install.
            out.push_str(&comment_out(
                statement,
                "the portable install of the first portable release contains this update",
            ));
            continue;
        }
        out.push_str(&transform(statement, &mut blocks)?);
    }
    if strip_comments(&out).trim().is_empty() {
        out.push_str("\nSELECT;\n");
    }
    Ok(out)
}

/// `-- portable: replaces <key>` blocks, by key.
fn parse_replacements(text: &str) -> Result<BTreeMap<String, String>> {
    const MARK: &str = "-- portable: replaces ";
    let mut blocks: BTreeMap<String, String> = BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    for line in text.lines() {
        if let Some(key) = line.strip_prefix(MARK) {
            if let Some((key, body)) = current.take() {
                blocks.insert(key, body);
            }
            let key = key.trim().to_owned();
            if blocks.contains_key(&key) {
                return Err(Error::InvalidArgument(format!(
                    "extension/sql/portable.sql replaces {key} twice"
                )));
            }
            current = Some((key, format!("{line}\n")));
        } else if let Some((_, body)) = current.as_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    if let Some((key, body)) = current {
        blocks.insert(key, body);
    }
    Ok(blocks)
}

fn transform(statement: &str, blocks: &mut BTreeMap<String, String>) -> Result<String> {
    let code = strip_comments(statement);
    if let Some(symbol) = c_symbol(&code) {
        let block = blocks.remove(&symbol).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "C function {symbol} has no portable replacement in extension/sql/portable.sql"
            ))
        })?;
        return Ok(format!("\n{}\n{block}", leading_comments(statement)));
    }
    if code.contains("pg_extension_config_dump(") {
        return Ok(comment_out(
            statement,
            "an extension's tables need pg_extension_config_dump to be dumped; plain ones are dumped anyway",
        ));
    }
    if code.contains("CREATE ROLE %I NOLOGIN") {
        let block = blocks.remove("roles").ok_or_else(|| {
            Error::InvalidArgument(
                "the roles have no portable block in extension/sql/portable.sql".to_owned(),
            )
        })?;
        return Ok(format!("\n{}\n{block}", leading_comments(statement)));
    }
    let upper = code.trim_start().to_ascii_uppercase();
    if (upper.starts_with("GRANT ") || upper.starts_with("REVOKE ")) && names_a_role(&code) {
        let condition = ROLES
            .iter()
            .map(|role| format!("pg_catalog.to_regrole('{role}') IS NOT NULL"))
            .collect::<Vec<_>>()
            .join("\n            AND ");
        let body = code.trim().trim_end_matches(';');
        return Ok(format!(
            "\n{}\n-- portable: only where the roles exist (they are not created without CREATEROLE).\n\
             DO $grant$\nBEGIN\n    IF {condition} THEN\n        EXECUTE $statement$\n{body}\n$statement$;\n    END IF;\nEND\n$grant$;\n",
            leading_comments(statement)
        ));
    }
    Ok(statement.to_owned())
}

/// The symbol of `AS 'MODULE_PATHNAME', '<symbol>'`, when the statement declares a C
/// function.
fn c_symbol(code: &str) -> Option<String> {
    let at = code.find("'MODULE_PATHNAME'")?;
    let rest = code[at + "'MODULE_PATHNAME'".len()..].trim_start();
    let rest = rest.strip_prefix(',')?.trim_start().strip_prefix('\'')?;
    let end = rest.find('\'')?;
    Some(rest[..end].to_owned())
}

fn names_a_role(code: &str) -> bool {
    ROLES.iter().any(|role| {
        code.match_indices(role).any(|(at, _)| {
            let after = code[at + role.len()..].chars().next();
            !after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        })
    })
}

/// The statement as SQL comments, with the reason.
fn comment_out(statement: &str, reason: &str) -> String {
    let mut out = format!(
        "\n{}\n-- portable: left out ({reason}):\n",
        leading_comments(statement)
    );
    for line in strip_comments(statement).trim().lines() {
        out.push_str("--   ");
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The comment lines before a statement's code.
fn leading_comments(statement: &str) -> String {
    let mut out = Vec::new();
    for line in statement.trim_start_matches('\n').lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with("--") || trimmed.starts_with("/*") {
            out.push(line);
        } else {
            break;
        }
    }
    while out.last().is_some_and(|line| line.trim().is_empty()) {
        out.pop();
    }
    out.join("\n")
}

/// `sql` without its comments, strings kept.
fn strip_comments(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut scanner = Scanner::new(sql);
    while let Some(token) = scanner.next_token() {
        if !matches!(token.kind, Kind::Comment) {
            out.push_str(token.text);
        }
    }
    out
}

/// Splits a script into its top-level statements, each with the comments and blank lines
/// before it and its `;`. Trailing text without a statement comes last.
fn split_statements(sql: &str) -> Vec<&str> {
    let mut statements = Vec::new();
    let mut start = 0;
    let mut scanner = Scanner::new(sql);
    while let Some(token) = scanner.next_token() {
        if matches!(token.kind, Kind::Semicolon) {
            statements.push(&sql[start..token.end]);
            start = token.end;
        }
    }
    if start < sql.len() {
        statements.push(&sql[start..]);
    }
    statements
}

enum Kind {
    Comment,
    Semicolon,
    Other,
}

struct Token<'a> {
    kind: Kind,
    text: &'a str,
    end: usize,
}

/// Just enough of PostgreSQL's lexer to find statement ends: comments (`--`, nested `/* */`),
/// quoted strings and identifiers, and dollar quotes.
struct Scanner<'a> {
    sql: &'a str,
    at: usize,
}

impl<'a> Scanner<'a> {
    fn new(sql: &'a str) -> Self {
        Scanner { sql, at: 0 }
    }

    fn next_token(&mut self) -> Option<Token<'a>> {
        let start = self.at;
        let rest = &self.sql[start..];
        let first = rest.chars().next()?;
        let (kind, len) = if rest.starts_with("--") {
            (Kind::Comment, rest.find('\n').map_or(rest.len(), |n| n + 1))
        } else if rest.starts_with("/*") {
            (Kind::Comment, block_comment_len(rest))
        } else if first == '\'' || first == '"' {
            (Kind::Other, quoted_len(rest, first))
        } else if first == '$' {
            (Kind::Other, dollar_quoted_len(rest).unwrap_or(1))
        } else if first == ';' {
            (Kind::Semicolon, 1)
        } else {
            // Up to the next character that may start something else; words containing `$`
            // (identifiers such as a$b) stay one token.
            let len = rest
                .char_indices()
                .skip(1)
                .find(|&(_, c)| matches!(c, '-' | '/' | '\'' | '"' | ';' | '$' | ' ' | '\n'))
                .map_or(rest.len(), |(n, _)| n);
            let word_with_dollar = rest[..len].chars().all(|c| c.is_alphanumeric() || c == '_')
                && rest[len..].starts_with('$');
            if word_with_dollar {
                let more = rest[len..]
                    .char_indices()
                    .find(|&(_, c)| !(c.is_alphanumeric() || c == '_' || c == '$'))
                    .map_or(rest.len() - len, |(n, _)| n);
                (Kind::Other, len + more)
            } else {
                (Kind::Other, len)
            }
        };
        self.at = start + len;
        Some(Token {
            kind,
            text: &self.sql[start..self.at],
            end: self.at,
        })
    }
}

fn block_comment_len(text: &str) -> usize {
    let mut depth = 0;
    let mut at = 0;
    while at < text.len() {
        if text[at..].starts_with("/*") {
            depth += 1;
            at += 2;
        } else if text[at..].starts_with("*/") {
            depth -= 1;
            at += 2;
            if depth == 0 {
                return at;
            }
        } else {
            at += text[at..].chars().next().map_or(1, char::len_utf8);
        }
    }
    text.len()
}

/// A '...' or "..." token, doubled quotes included.
fn quoted_len(text: &str, quote: char) -> usize {
    let mut chars = text.char_indices().skip(1).peekable();
    while let Some((at, c)) = chars.next() {
        if c == quote {
            if chars.peek().is_some_and(|&(_, next)| next == quote) {
                chars.next();
            } else {
                return at + 1;
            }
        }
    }
    text.len()
}

/// A $tag$...$tag$ token, or None when `$` starts no dollar quote (a parameter like $1).
fn dollar_quoted_len(text: &str) -> Option<usize> {
    let close = text[1..].find('$')? + 1;
    let tag = &text[..=close];
    if !tag[1..tag.len() - 1]
        .chars()
        .all(|c| c.is_alphanumeric() || c == '_')
        || tag[1..].starts_with(|c: char| c.is_ascii_digit())
    {
        return None;
    }
    let body = &text[tag.len()..];
    Some(
        body.find(tag)
            .map_or(text.len(), |end| tag.len() + end + tag.len()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_at_top_level_semicolons_only() {
        let sql = "-- a; comment\nSELECT 'x;y', \"q;\"; /* c; /* d; */ */ DO $$ BEGIN; END $$;\nSELECT $1, a$b;\n-- tail";
        let parts = split_statements(sql);
        assert_eq!(parts.len(), 4, "{parts:?}");
        assert_eq!(parts[0], "-- a; comment\nSELECT 'x;y', \"q;\";");
        assert_eq!(parts[1], " /* c; /* d; */ */ DO $$ BEGIN; END $$;");
        assert_eq!(parts[2], "\nSELECT $1, a$b;");
        assert_eq!(parts[3], "\n-- tail");
    }

    #[test]
    fn every_c_function_of_the_release_has_a_portable_replacement() {
        let script = install_script().expect("the portable script builds");
        assert!(!script.contains("MODULE_PATHNAME"), "no C function is left");
        assert!(!strip_comments(&script).contains("pg_extension_config_dump"));
        assert!(!strip_comments(&script).contains("CREATE ROLE %I NOLOGIN;"));
    }

    #[test]
    fn a_symbol_without_a_replacement_is_an_error() {
        let released =
            "CREATE FUNCTION f() RETURNS int LANGUAGE c AS 'MODULE_PATHNAME', 'f_wrapper';";
        let error = build_install("9.9.9", released, "").unwrap_err();
        assert!(error.to_string().contains("f_wrapper"), "{error}");
        let error = build_install("9.9.9", "SELECT 1;", "-- portable: replaces g\nSELECT 2;\n")
            .unwrap_err();
        assert!(error.to_string().contains("replaces g"), "{error}");
    }

    /// The committed script is what this module builds: regenerate it with
    /// `cargo run -p pg_eventstore_cli -- portable-sql > sql/portable/pg_eventstore--VERSION.sql`.
    #[test]
    fn the_committed_portable_script_is_the_built_one() {
        let committed = std::fs::read_to_string(format!(
            "{}/../sql/portable/pg_eventstore--{VERSION}.sql",
            env!("CARGO_MANIFEST_DIR")
        ))
        .expect("sql/portable/ has the current release's script");
        let built = install_script().expect("the portable script builds");
        assert!(
            committed == built,
            "sql/portable/pg_eventstore--{VERSION}.sql differs from what the client builds; \
             regenerate it with `cargo run -p pg_eventstore_cli -- portable-sql > \
             sql/portable/pg_eventstore--{VERSION}.sql`"
        );
    }
}
