//! Syntax tree of a parsed query.

use serde_json::Value;

/// A property path such as `properties.reported.lastDesiredStatus.code`, one entry per segment.
/// Segments are compared case-sensitively with the document's keys.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Path {
    pub segments: Vec<String>,
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CompareOp {
    Eq,
    NotEq,
    Lt,
    Gt,
    LtEq,
    GtEq,
}

/// Arithmetic operators (numbers only; anything else yields undefined).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ArithmeticOp {
    Add,
    Subtract,
    Multiply,
    Divide,
    Remainder,
}

/// The scalar functions the emulator evaluates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Function {
    IsDefined,
    IsNull,
    IsBool,
    IsNumber,
    IsString,
    IsObject,
    IsArray,
    IsPrimitive,
    StartsWith,
    EndsWith,
    Contains,
    ArrayContains,
    ArrayLength,
    Lower,
    Upper,
    Length,
}

impl Function {
    /// Looks a function up by name, case-insensitively. Both spellings IoT Hub documents are
    /// accepted: `STARTSWITH` (twin queries) and `STARTS_WITH` (routing queries).
    pub(crate) fn from_name(name: &str) -> Option<Function> {
        let f = match name.to_ascii_uppercase().as_str() {
            "IS_DEFINED" => Function::IsDefined,
            "IS_NULL" => Function::IsNull,
            "IS_BOOL" => Function::IsBool,
            "IS_NUMBER" => Function::IsNumber,
            "IS_STRING" => Function::IsString,
            "IS_OBJECT" => Function::IsObject,
            "IS_ARRAY" => Function::IsArray,
            "IS_PRIMITIVE" => Function::IsPrimitive,
            "STARTSWITH" | "STARTS_WITH" => Function::StartsWith,
            "ENDSWITH" | "ENDS_WITH" => Function::EndsWith,
            "CONTAINS" => Function::Contains,
            "ARRAY_CONTAINS" => Function::ArrayContains,
            "ARRAY_LENGTH" => Function::ArrayLength,
            "LOWER" => Function::Lower,
            "UPPER" => Function::Upper,
            "LENGTH" => Function::Length,
            _ => return None,
        };
        Some(f)
    }

    /// Number of arguments the function takes.
    pub(crate) fn arity(self) -> usize {
        match self {
            Function::StartsWith
            | Function::EndsWith
            | Function::Contains
            | Function::ArrayContains => 2,
            _ => 1,
        }
    }
}

/// An expression; a condition is an expression that must evaluate to boolean `true`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    /// A JSON constant, including array constants (`['a', 'b']`).
    Constant(Value),
    /// The `undefined` constant.
    Undefined,
    Path(Path),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Compare(CompareOp, Box<Expr>, Box<Expr>),
    /// `expr IN [..]` (`negated` for `NIN`).
    In {
        expr: Box<Expr>,
        list: Vec<Value>,
        negated: bool,
    },
    Arithmetic(ArithmeticOp, Box<Expr>, Box<Expr>),
    Negate(Box<Expr>),
    Call(Function, Vec<Expr>),
}

/// Aggregate functions allowed in a SELECT list.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Aggregate {
    Count,
    Sum(Expr),
    Avg(Expr),
    Min(Expr),
    Max(Expr),
}

/// One element of a SELECT list with the property name it gets in the result row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Projection<T> {
    pub value: T,
    pub name: String,
}

/// What SELECT returns.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Select {
    /// `SELECT *`: the whole document.
    All,
    /// One row per matching document with the listed properties (undefined ones left out).
    Rows(Vec<Projection<Expr>>),
    /// A single row of aggregates over all matching documents.
    Aggregates(Vec<Projection<Aggregate>>),
}
