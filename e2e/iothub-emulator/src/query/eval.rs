//! Evaluation of parsed expressions against twin documents.
//!
//! Semantics (IoT Hub's, as documented for twin queries):
//! - An expression evaluates to a JSON value or to *undefined* (`None`), e.g. a missing property.
//! - A condition holds only when it evaluates to boolean `true`; anything else (undefined, null,
//!   strings, `false`) counts as false. `NOT`, `AND` and `OR` work on that two-valued reading,
//!   so `NOT (tags.x = 'a')` holds for a device without `tags.x`.
//! - Comparisons are defined only between two primitives of the same type (numbers, strings,
//!   booleans, null); anything else, including a missing side, is undefined and so never matches.

use super::ast::{Aggregate, ArithmeticOp, CompareOp, Expr, Function, Path, Projection, Select};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::cmp::Ordering;

/// The result of evaluating an expression: `None` is IoT Hub's *undefined*.
type Evaluated<'a> = Option<Cow<'a, Value>>;

/// Whether `expr` evaluates to boolean `true` for `doc`.
pub(crate) fn holds(expr: &Expr, doc: &Value) -> bool {
    matches!(evaluate(expr, doc).as_deref(), Some(Value::Bool(true)))
}

/// Looks up a property path; a segment that is missing or crosses a non-object is undefined.
fn resolve<'a>(path: &Path, doc: &'a Value) -> Option<&'a Value> {
    path.segments
        .iter()
        .try_fold(doc, |current, segment| current.as_object()?.get(segment))
}

fn boolean<'a>(b: bool) -> Evaluated<'a> {
    Some(Cow::Owned(Value::Bool(b)))
}

/// Evaluates `expr` against `doc`.
pub(crate) fn evaluate<'a>(expr: &'a Expr, doc: &'a Value) -> Evaluated<'a> {
    match expr {
        Expr::Constant(v) => Some(Cow::Borrowed(v)),
        Expr::Undefined => None,
        Expr::Path(path) => resolve(path, doc).map(Cow::Borrowed),
        Expr::Not(inner) => boolean(!holds(inner, doc)),
        Expr::And(a, b) => boolean(holds(a, doc) && holds(b, doc)),
        Expr::Or(a, b) => boolean(holds(a, doc) || holds(b, doc)),
        Expr::Compare(op, a, b) => {
            let ordering = compare(evaluate(a, doc).as_deref()?, evaluate(b, doc).as_deref()?)?;
            boolean(match op {
                CompareOp::Eq => ordering == Ordering::Equal,
                CompareOp::NotEq => ordering != Ordering::Equal,
                CompareOp::Lt => ordering == Ordering::Less,
                CompareOp::Gt => ordering == Ordering::Greater,
                CompareOp::LtEq => ordering != Ordering::Greater,
                CompareOp::GtEq => ordering != Ordering::Less,
            })
        }
        Expr::In {
            expr,
            list,
            negated,
        } => {
            let value = evaluate(expr, doc)?;
            if !is_primitive(&value) {
                return None;
            }
            let found = list
                .iter()
                .any(|item| compare(&value, item) == Some(Ordering::Equal));
            boolean(found != *negated)
        }
        Expr::Arithmetic(op, a, b) => {
            let a = evaluate(a, doc)?.as_f64()?;
            let b = evaluate(b, doc)?.as_f64()?;
            let result = match op {
                ArithmeticOp::Add => a + b,
                ArithmeticOp::Subtract => a - b,
                ArithmeticOp::Multiply => a * b,
                ArithmeticOp::Divide if b != 0.0 => a / b,
                ArithmeticOp::Remainder if b != 0.0 => a % b,
                ArithmeticOp::Divide | ArithmeticOp::Remainder => return None,
            };
            number(result).map(Cow::Owned)
        }
        Expr::Negate(inner) => number(-evaluate(inner, doc)?.as_f64()?).map(Cow::Owned),
        Expr::Call(function, args) => call(*function, args, doc),
    }
}

/// A JSON number for `x`: integral values stay integers so results print as `2`, not `2.0`.
fn number(x: f64) -> Option<Value> {
    const EXACT_INTEGER_LIMIT: f64 = 9_007_199_254_740_992.0; // 2^53
    if x.fract() == 0.0 && x.abs() < EXACT_INTEGER_LIMIT {
        return Some(Value::from(x as i64));
    }
    serde_json::Number::from_f64(x).map(Value::Number)
}

fn is_primitive(v: &Value) -> bool {
    !matches!(v, Value::Object(_) | Value::Array(_))
}

/// Orders two primitives of the same type; `None` when they cannot be compared.
fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Null, Value::Null) => Some(Ordering::Equal),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Number(x), Value::Number(y)) => match (integer(x), integer(y)) {
            (Some(i), Some(j)) => Some(i.cmp(&j)),
            _ => x.as_f64()?.partial_cmp(&y.as_f64()?),
        },
        _ => None,
    }
}

/// An exact integer view of a JSON number, so that large ids and counters compare exactly.
fn integer(n: &serde_json::Number) -> Option<i128> {
    n.as_i64()
        .map(i128::from)
        .or_else(|| n.as_u64().map(i128::from))
}

/// Deep equality with numeric equality for numbers (`1` equals `1.0`).
fn values_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| values_equal(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| values_equal(v, w)))
        }
        _ => compare(a, b) == Some(Ordering::Equal),
    }
}

fn call<'a>(function: Function, args: &'a [Expr], doc: &'a Value) -> Evaluated<'a> {
    let first = args.first().and_then(|a| evaluate(a, doc));
    let type_check = |test: fn(&Value) -> bool| boolean(first.as_deref().is_some_and(test));
    match function {
        Function::IsDefined => boolean(first.is_some()),
        Function::IsNull => type_check(Value::is_null),
        Function::IsBool => type_check(Value::is_boolean),
        Function::IsNumber => type_check(Value::is_number),
        Function::IsString => type_check(Value::is_string),
        Function::IsObject => type_check(Value::is_object),
        Function::IsArray => type_check(Value::is_array),
        Function::IsPrimitive => type_check(is_primitive),
        Function::StartsWith | Function::EndsWith | Function::Contains => {
            let text = first?;
            let text = text.as_str()?;
            let second = evaluate(args.get(1)?, doc)?;
            let fragment = second.as_str()?;
            boolean(match function {
                Function::StartsWith => text.starts_with(fragment),
                Function::EndsWith => text.ends_with(fragment),
                _ => text.contains(fragment),
            })
        }
        Function::ArrayContains => {
            let array = first?;
            let array = array.as_array()?;
            let needle = evaluate(args.get(1)?, doc)?;
            boolean(array.iter().any(|item| values_equal(item, &needle)))
        }
        Function::ArrayLength => Some(Cow::Owned(Value::from(first?.as_array()?.len()))),
        Function::Lower => Some(Cow::Owned(Value::from(first?.as_str()?.to_lowercase()))),
        Function::Upper => Some(Cow::Owned(Value::from(first?.as_str()?.to_uppercase()))),
        Function::Length => Some(Cow::Owned(Value::from(first?.as_str()?.chars().count()))),
    }
}

/// Produces the result rows of a query from the documents that passed the WHERE clause.
pub(crate) fn project<'a>(
    select: &Select,
    matching: impl Iterator<Item = &'a Value>,
) -> Vec<Value> {
    match select {
        Select::All => matching.cloned().collect(),
        Select::Rows(items) => matching.map(|doc| project_row(items, doc)).collect(),
        Select::Aggregates(items) => vec![aggregate_row(items, &matching.collect::<Vec<_>>())],
    }
}

fn project_row(items: &[Projection<Expr>], doc: &Value) -> Value {
    let mut row = Map::new();
    for item in items {
        // Undefined values are left out of the row, as IoT Hub does.
        if let Some(value) = evaluate(&item.value, doc) {
            row.insert(item.name.clone(), value.into_owned());
        }
    }
    Value::Object(row)
}

fn aggregate_row(items: &[Projection<Aggregate>], docs: &[&Value]) -> Value {
    let mut row = Map::new();
    for item in items {
        let value = match &item.value {
            Aggregate::Count => Some(Value::from(docs.len())),
            Aggregate::Sum(expr) => number(numbers(expr, docs).sum()),
            Aggregate::Avg(expr) => {
                let values: Vec<f64> = numbers(expr, docs).collect();
                (!values.is_empty())
                    .then(|| number(values.iter().sum::<f64>() / values.len() as f64))
                    .flatten()
            }
            Aggregate::Min(expr) => extreme(expr, docs, Ordering::Less),
            Aggregate::Max(expr) => extreme(expr, docs, Ordering::Greater),
        };
        if let Some(value) = value {
            row.insert(item.name.clone(), value);
        }
    }
    Value::Object(row)
}

/// The numeric values `expr` takes over `docs` (other values are skipped).
fn numbers<'a>(expr: &'a Expr, docs: &'a [&'a Value]) -> impl Iterator<Item = f64> + 'a {
    docs.iter()
        .filter_map(move |doc| evaluate(expr, doc).and_then(|v| v.as_f64()))
}

/// MIN (`wanted` = Less) or MAX (Greater) over the primitive values `expr` takes; values of a
/// type that cannot be ordered against the current best are skipped.
fn extreme(expr: &Expr, docs: &[&Value], wanted: Ordering) -> Option<Value> {
    let mut best: Option<Value> = None;
    for doc in docs {
        let Some(value) = evaluate(expr, doc) else {
            continue;
        };
        if !is_primitive(&value) || value.is_null() {
            continue;
        }
        let replace = match &best {
            None => true,
            Some(current) => compare(&value, current) == Some(wanted),
        };
        if replace {
            best = Some(value.into_owned());
        }
    }
    best
}
