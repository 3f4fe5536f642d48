//! The IoT Hub query language: `POST /devices/query` and configuration target conditions.
//!
//! A real tokenizer and recursive-descent parser (see [`parser`] for the grammar) produce a
//! syntax tree that is evaluated against twin JSON documents as `GET /twins/{id}` returns them.
//!
//! Supported: `SELECT *`, `SELECT [TOP n]` with property paths, expressions, `AS` aliases and
//! the aggregates `COUNT()`, `SUM`, `AVG`, `MIN`, `MAX`; `FROM devices` and
//! `FROM devices.modules`; `WHERE` with `AND`, `OR`, `NOT`, parentheses, `=`, `!=`, `<>`, `<`,
//! `>`, `<=`, `>=`, `IN [..]`, `NIN [..]`, `+ - * / %`, string (single or double quotes),
//! number (decimal or `0x` hex), `true`, `false`, `null` and `undefined` constants, dotted paths
//! with `[[any text]]` segments (`configurations.[[my-deployment]].status`), and the functions
//! listed in [`ast::Function`]. Keywords and function names are case-insensitive; property names
//! are case-sensitive.
//!
//! Not supported, reported as a [`QueryError`] pointing at the offending token: `GROUP BY`,
//! `ORDER BY`, `JOIN`, `devices.jobs`, other functions.

mod ast;
mod eval;
mod lexer;
mod parser;
#[cfg(test)]
mod tests;

use serde_json::Value;
use std::fmt;

/// The document collection a query reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Collection {
    /// `FROM devices`: device twins.
    Devices,
    /// `FROM devices.modules`: module twins.
    DevicesModules,
}

/// Which quotes and escapes string literals may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Literals {
    /// Single or double quotes, a doubled quote, and the JSON escapes (`\n`, `\t`, `\/`, ...).
    #[default]
    Lenient,
    /// Twin queries as IoT Hub's query language reference describes them: single or double
    /// quotes, escapes `\'`, `\"`, `\\` and `\uXXXX` only, and a doubled quote (the hub runs
    /// target conditions, which escape by doubling, inside its own metric queries).
    Query,
    /// Configuration target conditions: single quotes only, a quote inside a value doubled, no
    /// backslash and no double quote anywhere.
    TargetCondition,
}

/// A query or condition that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryError {
    /// Character offset (not byte offset) into the input where the problem starts.
    pub position: usize,
    /// What is wrong and, where it helps, how to write it instead.
    pub message: String,
    /// The text breaks a character rule of target conditions (double quote, backslash) rather
    /// than the grammar.
    pub literal_rule: bool,
}

impl QueryError {
    pub(crate) fn new(position: usize, message: impl Into<String>) -> QueryError {
        QueryError {
            position,
            message: message.into(),
            literal_rule: false,
        }
    }

    pub(crate) fn literal_rule(position: usize, message: impl Into<String>) -> QueryError {
        QueryError {
            literal_rule: true,
            ..QueryError::new(position, message)
        }
    }
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "syntax error at character {}: {}",
            self.position, self.message
        )
    }
}

impl std::error::Error for QueryError {}

/// A parsed `SELECT ... FROM ... [WHERE ...]` query.
#[derive(Debug, Clone)]
pub struct Query {
    collection: Collection,
    select: ast::Select,
    top: Option<u64>,
    condition: Option<ast::Expr>,
}

/// Parses a twin query such as `SELECT * FROM devices.modules WHERE moduleId = '$edgeAgent'`
/// with lenient string literals.
pub fn parse_query(sql: &str) -> Result<Query, QueryError> {
    parse_query_with(sql, Literals::Lenient)
}

/// Parses a twin query with the given string-literal rules.
pub fn parse_query_with(sql: &str, literals: Literals) -> Result<Query, QueryError> {
    let parsed = parser::Parser::new(sql, literals)?.parse_query()?;
    Ok(Query {
        collection: parsed.collection,
        select: parsed.select,
        top: parsed.top,
        condition: parsed.condition,
    })
}

impl Query {
    /// Which collection the caller must pass to [`Query::execute`].
    pub fn collection(&self) -> Collection {
        self.collection
    }

    /// True for `SELECT *` (rows are whole twins, IoT Hub's item type `twin`); false for
    /// projections and aggregates (item type `raw`).
    pub fn selects_whole_documents(&self) -> bool {
        self.select == ast::Select::All
    }

    /// Whether `doc` passes the WHERE clause (always true without one).
    pub fn matches(&self, doc: &Value) -> bool {
        self.condition
            .as_ref()
            .is_none_or(|condition| eval::holds(condition, doc))
    }

    /// Runs the query over `docs`, the documents of [`Query::collection`] in the order the
    /// results should come back, and returns all result rows (the caller pages them).
    pub fn execute(&self, docs: &[Value]) -> Vec<Value> {
        let matching = docs.iter().filter(|doc| self.matches(doc));
        let mut rows = eval::project(&self.select, matching);
        if let Some(top) = self.top {
            rows.truncate(usize::try_from(top).unwrap_or(usize::MAX));
        }
        rows
    }
}

/// A WHERE expression on its own, as in a configuration's `targetCondition`.
#[derive(Debug, Clone)]
pub struct Condition {
    /// `None` for `*`, which targets every device.
    expr: Option<ast::Expr>,
}

/// Parses a condition such as `tags.environment = 'prod' AND capabilities.iotEdge = true`.
///
/// `*` (all devices, as IoT Hub accepts for automatic device management) matches everything. An
/// empty condition is an error: a configuration without a target condition targets no device,
/// which the caller decides without evaluating anything.
pub fn parse_condition(expr: &str) -> Result<Condition, QueryError> {
    parse_condition_with(expr, Literals::Lenient)
}

/// Parses a condition with the given string-literal rules.
pub fn parse_condition_with(expr: &str, literals: Literals) -> Result<Condition, QueryError> {
    if expr.trim() == "*" {
        return Ok(Condition { expr: None });
    }
    let parsed = parser::Parser::new(expr, literals)?.parse_condition()?;
    Ok(Condition { expr: Some(parsed) })
}

impl Condition {
    /// Whether `doc` (a device or module twin) satisfies the condition.
    pub fn matches(&self, doc: &Value) -> bool {
        self.expr.as_ref().is_none_or(|expr| eval::holds(expr, doc))
    }
}
