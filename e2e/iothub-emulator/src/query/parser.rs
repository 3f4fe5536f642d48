//! Recursive-descent parser for the IoT Hub query language.
//!
//! Grammar (keywords case-insensitive, property names case-sensitive):
//! ```text
//! query      := SELECT [TOP number] select_list FROM collection [WHERE expr] EOF
//! select_list:= '*' | item (',' item)*
//! item       := (aggregate | expr) [AS name]
//! aggregate  := COUNT '(' ')' | (SUM|AVG|MIN|MAX) '(' expr ')'
//! collection := devices | devices.modules
//! expr       := and (OR and)*
//! and        := not (AND not)*
//! not        := NOT not | comparison
//! comparison := additive [(= | != | <> | < | > | <= | >=) additive | (IN | NIN) array]
//! additive   := multiplicative ((+|-) multiplicative)*
//! multiplicative := unary ((*|/|%) unary)*
//! unary      := '-' unary | primary
//! primary    := constant | array | path | function '(' args ')' | '(' expr ')'
//! path       := name ('.' name)*        name := word | [[any text]]
//! ```

use super::Collection;
use super::Literals;
use super::QueryError;
use super::ast::{Aggregate, ArithmeticOp, CompareOp, Expr, Function, Path, Projection, Select};
use super::lexer::{Token, TokenKind, tokenize_with};
use serde_json::Value;

/// Words that cannot start a property path because they structure the query.
const RESERVED: &[&str] = &[
    "SELECT", "FROM", "WHERE", "AND", "OR", "NOT", "IN", "NIN", "AS", "TOP", "GROUP", "BY",
    "ORDER", "JOIN", "HAVING", "LIMIT", "OFFSET", "DISTINCT", "VALUE",
];

const AGGREGATES: &[&str] = &["COUNT", "SUM", "AVG", "MIN", "MAX"];

/// Everything a full query parses into.
pub(crate) struct ParsedQuery {
    pub select: Select,
    pub top: Option<u64>,
    pub collection: Collection,
    pub condition: Option<Expr>,
}

pub(crate) struct Parser {
    tokens: Vec<Token>,
    index: usize,
}

impl Parser {
    pub(crate) fn new(input: &str, literals: Literals) -> Result<Parser, QueryError> {
        Ok(Parser {
            tokens: tokenize_with(input, literals)?,
            index: 0,
        })
    }

    fn peek(&self) -> &Token {
        &self.tokens[self.index]
    }

    fn peek_kind_at(&self, offset: usize) -> &TokenKind {
        let last = self.tokens.len() - 1;
        &self.tokens[(self.index + offset).min(last)].kind
    }

    fn advance(&mut self) -> Token {
        let token = self.tokens[self.index].clone();
        if self.index < self.tokens.len() - 1 {
            self.index += 1;
        }
        token
    }

    fn at_keyword(&self, keyword: &str) -> bool {
        matches!(&self.peek().kind, TokenKind::Word(w) if w.eq_ignore_ascii_case(keyword))
    }

    fn eat_keyword(&mut self, keyword: &str) -> bool {
        let found = self.at_keyword(keyword);
        if found {
            self.advance();
        }
        found
    }

    fn error_here(&self, message: impl Into<String>) -> QueryError {
        QueryError::new(self.peek().position, message)
    }

    fn unexpected(&self, expected: &str) -> QueryError {
        self.error_here(format!(
            "expected {expected} but found {}",
            self.peek().kind.describe()
        ))
    }

    fn expect(&mut self, kind: TokenKind, expected: &str) -> Result<Token, QueryError> {
        if self.peek().kind == kind {
            Ok(self.advance())
        } else {
            Err(self.unexpected(expected))
        }
    }

    fn expect_eof(&self, expected: &str) -> Result<(), QueryError> {
        match &self.peek().kind {
            TokenKind::Eof => Ok(()),
            TokenKind::Word(w) => Err(self.error_here(
                unsupported_clause(w)
                    .unwrap_or_else(|| format!("expected {expected} but found '{w}'")),
            )),
            _ => Err(self.unexpected(expected)),
        }
    }

    /// Parses a whole `SELECT ... FROM ... [WHERE ...]` query.
    pub(crate) fn parse_query(&mut self) -> Result<ParsedQuery, QueryError> {
        if !self.eat_keyword("SELECT") {
            return Err(self.unexpected("SELECT"));
        }
        let top = if self.eat_keyword("TOP") {
            Some(self.parse_top_count()?)
        } else {
            None
        };
        let select = self.parse_select_list()?;
        if !self.eat_keyword("FROM") {
            return Err(self.unexpected(if select == Select::All {
                "FROM"
            } else {
                "',' or FROM"
            }));
        }
        let collection = self.parse_collection()?;
        let condition = if self.eat_keyword("WHERE") {
            Some(self.parse_expr()?)
        } else {
            None
        };
        let expected = if condition.is_some() {
            "AND, OR or the end of the query"
        } else {
            "WHERE or the end of the query"
        };
        self.expect_eof(expected)?;
        Ok(ParsedQuery {
            select,
            top,
            collection,
            condition,
        })
    }

    /// Parses a WHERE expression on its own (a configuration's targetCondition).
    pub(crate) fn parse_condition(&mut self) -> Result<Expr, QueryError> {
        if self.peek().kind == TokenKind::Eof {
            return Err(self.error_here("the condition is empty"));
        }
        let expr = self.parse_expr()?;
        self.expect_eof("AND, OR or the end of the condition")?;
        Ok(expr)
    }

    fn parse_top_count(&mut self) -> Result<u64, QueryError> {
        let token = self.advance();
        match &token.kind {
            TokenKind::Number(n) if n.as_u64().is_some() => Ok(n.as_u64().unwrap_or_default()),
            other => Err(QueryError::new(
                token.position,
                format!(
                    "TOP must be followed by a whole number of rows, found {}",
                    other.describe()
                ),
            )),
        }
    }

    fn parse_select_list(&mut self) -> Result<Select, QueryError> {
        if self.peek().kind == TokenKind::Star {
            self.advance();
            if self.peek().kind == TokenKind::Comma {
                return Err(self.error_here(
                    "SELECT * cannot be combined with other properties; list the properties instead",
                ));
            }
            return Ok(Select::All);
        }
        let mut rows: Vec<(usize, Projection<Expr>)> = Vec::new();
        let mut aggregates: Vec<(usize, Projection<Aggregate>)> = Vec::new();
        let mut unnamed = 0;
        let mut names: Vec<String> = Vec::new();
        loop {
            let position = self.peek().position;
            let aggregate = self.try_parse_aggregate()?;
            let expr = match aggregate {
                Some(_) => None,
                None => Some(self.parse_expr()?),
            };
            let name = if self.eat_keyword("AS") {
                self.parse_alias()?
            } else if let Some(Expr::Path(path)) = &expr {
                path.segments.last().cloned().unwrap_or_default()
            } else {
                unnamed += 1;
                format!("${unnamed}")
            };
            if names.contains(&name) {
                return Err(QueryError::new(
                    position,
                    format!(
                        "the result property '{name}' is selected twice; give one of them another name with AS"
                    ),
                ));
            }
            names.push(name.clone());
            match (aggregate, expr) {
                (Some(value), _) => aggregates.push((position, Projection { value, name })),
                (None, Some(value)) => rows.push((position, Projection { value, name })),
                (None, None) => unreachable!("an item is either an aggregate or an expression"),
            }
            if self.peek().kind != TokenKind::Comma {
                break;
            }
            self.advance();
        }
        match (rows.first(), aggregates.is_empty()) {
            (_, true) => Ok(Select::Rows(rows.into_iter().map(|(_, p)| p).collect())),
            (None, false) => Ok(Select::Aggregates(
                aggregates.into_iter().map(|(_, p)| p).collect(),
            )),
            (Some((position, _)), false) => Err(QueryError::new(
                *position,
                "a property cannot be selected together with an aggregate without GROUP BY, \
                 and GROUP BY is not supported by the emulator",
            )),
        }
    }

    fn parse_alias(&mut self) -> Result<String, QueryError> {
        let token = self.advance();
        match token.kind {
            TokenKind::Word(w) if !is_reserved(&w) => Ok(w),
            TokenKind::BracketedName(n) => Ok(n),
            other => Err(QueryError::new(
                token.position,
                format!("expected a name after AS but found {}", other.describe()),
            )),
        }
    }

    /// Parses `COUNT()`, `SUM(x)`, `AVG(x)`, `MIN(x)` or `MAX(x)` if the next tokens are one.
    fn try_parse_aggregate(&mut self) -> Result<Option<Aggregate>, QueryError> {
        let name = match &self.peek().kind {
            TokenKind::Word(w) if AGGREGATES.iter().any(|a| a.eq_ignore_ascii_case(w)) => {
                w.to_ascii_uppercase()
            }
            _ => return Ok(None),
        };
        if *self.peek_kind_at(1) != TokenKind::LParen {
            return Ok(None);
        }
        self.advance();
        self.advance();
        if name == "COUNT" {
            self.expect(TokenKind::RParen, "')' (COUNT takes no argument: COUNT())")?;
            return Ok(Some(Aggregate::Count));
        }
        let argument = self.parse_expr()?;
        self.expect(TokenKind::RParen, "')'")?;
        Ok(Some(match name.as_str() {
            "SUM" => Aggregate::Sum(argument),
            "AVG" => Aggregate::Avg(argument),
            "MIN" => Aggregate::Min(argument),
            _ => Aggregate::Max(argument),
        }))
    }

    fn parse_collection(&mut self) -> Result<Collection, QueryError> {
        let start = self.peek().position;
        match &self.peek().kind {
            TokenKind::Word(w) if w.eq_ignore_ascii_case("devices") => {}
            _ => {
                return Err(self.unexpected("the collection devices or devices.modules"));
            }
        }
        self.advance();
        if self.peek().kind != TokenKind::Dot {
            return Ok(Collection::Devices);
        }
        self.advance();
        let token = self.advance();
        match &token.kind {
            TokenKind::Word(w) if w.eq_ignore_ascii_case("modules") => {
                Ok(Collection::DevicesModules)
            }
            TokenKind::Word(w) if w.eq_ignore_ascii_case("jobs") => Err(QueryError::new(
                start,
                "the collection devices.jobs is not supported by the emulator",
            )),
            other => Err(QueryError::new(
                token.position,
                format!(
                    "unknown collection devices.{}; expected devices or devices.modules",
                    match other {
                        TokenKind::Word(w) => w.clone(),
                        other => other.describe(),
                    }
                ),
            )),
        }
    }

    fn parse_expr(&mut self) -> Result<Expr, QueryError> {
        let mut left = self.parse_and()?;
        while self.eat_keyword("OR") {
            let right = self.parse_and()?;
            left = Expr::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn parse_and(&mut self) -> Result<Expr, QueryError> {
        let mut left = self.parse_not()?;
        while self.eat_keyword("AND") {
            let right = self.parse_not()?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn parse_not(&mut self) -> Result<Expr, QueryError> {
        if self.eat_keyword("NOT") {
            return Ok(Expr::Not(Box::new(self.parse_not()?)));
        }
        self.parse_comparison()
    }

    fn parse_comparison(&mut self) -> Result<Expr, QueryError> {
        let left = self.parse_additive()?;
        let op = match &self.peek().kind {
            TokenKind::Eq => CompareOp::Eq,
            TokenKind::NotEq => CompareOp::NotEq,
            TokenKind::Lt => CompareOp::Lt,
            TokenKind::Gt => CompareOp::Gt,
            TokenKind::LtEq => CompareOp::LtEq,
            TokenKind::GtEq => CompareOp::GtEq,
            TokenKind::Word(w) if w.eq_ignore_ascii_case("IN") || w.eq_ignore_ascii_case("NIN") => {
                let negated = w.eq_ignore_ascii_case("NIN");
                self.advance();
                let list = self.parse_array_constant(
                    "IN and NIN expect a list of constants like ['a', 'b']",
                )?;
                return Ok(Expr::In {
                    expr: Box::new(left),
                    list,
                    negated,
                });
            }
            TokenKind::Word(w)
                if w.eq_ignore_ascii_case("NOT")
                    && matches!(self.peek_kind_at(1), TokenKind::Word(n) if n.eq_ignore_ascii_case("IN")) =>
            {
                return Err(self.error_here("NOT IN is not IoT Hub syntax; write NIN [..]"));
            }
            _ => return Ok(left),
        };
        self.advance();
        let right = self.parse_additive()?;
        Ok(Expr::Compare(op, Box::new(left), Box::new(right)))
    }

    fn parse_additive(&mut self) -> Result<Expr, QueryError> {
        let mut left = self.parse_multiplicative()?;
        loop {
            let op = match self.peek().kind {
                TokenKind::Plus => ArithmeticOp::Add,
                TokenKind::Minus => ArithmeticOp::Subtract,
                _ => return Ok(left),
            };
            self.advance();
            let right = self.parse_multiplicative()?;
            left = Expr::Arithmetic(op, Box::new(left), Box::new(right));
        }
    }

    fn parse_multiplicative(&mut self) -> Result<Expr, QueryError> {
        let mut left = self.parse_unary()?;
        loop {
            let op = match self.peek().kind {
                TokenKind::Star => ArithmeticOp::Multiply,
                TokenKind::Slash => ArithmeticOp::Divide,
                TokenKind::Percent => ArithmeticOp::Remainder,
                _ => return Ok(left),
            };
            self.advance();
            let right = self.parse_unary()?;
            left = Expr::Arithmetic(op, Box::new(left), Box::new(right));
        }
    }

    fn parse_unary(&mut self) -> Result<Expr, QueryError> {
        if self.peek().kind == TokenKind::Minus {
            self.advance();
            return match self.parse_unary()? {
                Expr::Constant(Value::Number(n)) => Ok(Expr::Constant(negate_number(&n))),
                other => Ok(Expr::Negate(Box::new(other))),
            };
        }
        self.parse_primary()
    }

    fn parse_primary(&mut self) -> Result<Expr, QueryError> {
        let token = self.peek().clone();
        match token.kind {
            TokenKind::Str(s) => {
                self.advance();
                Ok(Expr::Constant(Value::String(s)))
            }
            TokenKind::Number(n) => {
                self.advance();
                Ok(Expr::Constant(Value::Number(n)))
            }
            TokenKind::LParen => {
                self.advance();
                let inner = self.parse_expr()?;
                self.expect(TokenKind::RParen, "')'")?;
                Ok(inner)
            }
            TokenKind::LBracket => Ok(Expr::Constant(Value::Array(
                self.parse_array_constant("an array constant")?,
            ))),
            TokenKind::BracketedName(_) => Ok(Expr::Path(self.parse_path()?)),
            TokenKind::Word(ref w) => {
                if let Some(constant) = word_constant(w) {
                    self.advance();
                    return Ok(constant);
                }
                if *self.peek_kind_at(1) == TokenKind::LParen {
                    return self.parse_call();
                }
                if is_reserved(w) {
                    return Err(self.error_here(match unsupported_clause(w) {
                        Some(message) => message,
                        None => format!(
                            "expected a value, a property or a function but found the keyword {}",
                            w.to_ascii_uppercase()
                        ),
                    }));
                }
                Ok(Expr::Path(self.parse_path()?))
            }
            _ => Err(self.unexpected("a value, a property or a function")),
        }
    }

    fn parse_call(&mut self) -> Result<Expr, QueryError> {
        let name_token = self.advance();
        let TokenKind::Word(name) = name_token.kind else {
            unreachable!("parse_call is only entered on a word");
        };
        let function = Function::from_name(&name).ok_or_else(|| {
            let message = if AGGREGATES.iter().any(|a| a.eq_ignore_ascii_case(&name)) {
                format!(
                    "the aggregate {}() is only allowed in the SELECT list",
                    name.to_ascii_uppercase()
                )
            } else {
                format!(
                    "the function {name} is not supported by the emulator; supported: IS_DEFINED, \
                     IS_NULL, IS_BOOL, IS_NUMBER, IS_STRING, IS_OBJECT, IS_ARRAY, IS_PRIMITIVE, \
                     STARTSWITH, ENDSWITH, CONTAINS, ARRAY_CONTAINS, ARRAY_LENGTH, LOWER, UPPER, LENGTH"
                )
            };
            QueryError::new(name_token.position, message)
        })?;
        self.expect(TokenKind::LParen, "'('")?;
        let mut args = Vec::new();
        if self.peek().kind != TokenKind::RParen {
            loop {
                args.push(self.parse_expr()?);
                if self.peek().kind != TokenKind::Comma {
                    break;
                }
                self.advance();
            }
        }
        if self.peek().kind != TokenKind::RParen || args.len() != function.arity() {
            if self.peek().kind != TokenKind::RParen && self.peek().kind != TokenKind::Comma {
                return Err(self.unexpected("',' or ')'"));
            }
            return Err(QueryError::new(
                name_token.position,
                format!(
                    "{} takes {} argument(s), {} given",
                    name.to_ascii_uppercase(),
                    function.arity(),
                    args.len()
                ),
            ));
        }
        self.advance();
        Ok(Expr::Call(function, args))
    }

    fn parse_path(&mut self) -> Result<Path, QueryError> {
        let mut segments = vec![self.parse_path_segment()?];
        while self.peek().kind == TokenKind::Dot {
            self.advance();
            segments.push(self.parse_path_segment()?);
        }
        Ok(Path { segments })
    }

    fn parse_path_segment(&mut self) -> Result<String, QueryError> {
        match self.peek().kind.clone() {
            TokenKind::Word(w) => {
                self.advance();
                Ok(w)
            }
            TokenKind::BracketedName(n) => {
                self.advance();
                Ok(n)
            }
            _ => Err(self.unexpected("a property name (write [[name]] for special characters)")),
        }
    }

    /// Parses `[c1, c2, ...]` where each element is a string, number, boolean or null constant.
    fn parse_array_constant(&mut self, expected: &str) -> Result<Vec<Value>, QueryError> {
        if self.peek().kind != TokenKind::LBracket {
            return Err(self.unexpected(expected));
        }
        self.advance();
        let mut values = Vec::new();
        if self.peek().kind == TokenKind::RBracket {
            self.advance();
            return Ok(values);
        }
        loop {
            values.push(self.parse_list_constant()?);
            let token = self.advance();
            match token.kind {
                TokenKind::Comma => continue,
                TokenKind::RBracket => return Ok(values),
                other => {
                    return Err(QueryError::new(
                        token.position,
                        format!("expected ',' or ']' but found {}", other.describe()),
                    ));
                }
            }
        }
    }

    fn parse_list_constant(&mut self) -> Result<Value, QueryError> {
        let negative = self.peek().kind == TokenKind::Minus;
        if negative {
            self.advance();
        }
        let token = self.advance();
        let value = match (&token.kind, negative) {
            (TokenKind::Str(s), false) => Value::String(s.clone()),
            (TokenKind::Number(n), false) => Value::Number(n.clone()),
            (TokenKind::Number(n), true) => negate_number(n),
            (TokenKind::Word(w), false) => match word_constant(w) {
                Some(Expr::Constant(v)) => v,
                _ => {
                    return Err(QueryError::new(
                        token.position,
                        format!(
                            "array elements must be constants (text in quotes, numbers, true, \
                             false or null), found '{w}'"
                        ),
                    ));
                }
            },
            (other, _) => {
                return Err(QueryError::new(
                    token.position,
                    format!(
                        "array elements must be constants (text in quotes, numbers, true, false \
                         or null), found {}",
                        other.describe()
                    ),
                ));
            }
        };
        Ok(value)
    }
}

fn is_reserved(word: &str) -> bool {
    RESERVED.iter().any(|r| r.eq_ignore_ascii_case(word))
}

/// The message for a clause the emulator recognises but does not implement.
fn unsupported_clause(word: &str) -> Option<String> {
    let clause = match word.to_ascii_uppercase().as_str() {
        "GROUP" => "GROUP BY",
        "ORDER" => "ORDER BY",
        "JOIN" => "JOIN",
        "HAVING" => "HAVING",
        "LIMIT" => "LIMIT",
        "OFFSET" => "OFFSET",
        "DISTINCT" => "DISTINCT",
        "VALUE" => "SELECT VALUE",
        _ => return None,
    };
    Some(format!("{clause} is not supported by the emulator"))
}

/// `true`, `false`, `null` and `undefined` are constants whatever their case.
fn word_constant(word: &str) -> Option<Expr> {
    match word.to_ascii_lowercase().as_str() {
        "true" => Some(Expr::Constant(Value::Bool(true))),
        "false" => Some(Expr::Constant(Value::Bool(false))),
        "null" => Some(Expr::Constant(Value::Null)),
        "undefined" => Some(Expr::Undefined),
        _ => None,
    }
}

fn negate_number(n: &serde_json::Number) -> Value {
    if let Some(i) = n.as_i64().and_then(i64::checked_neg) {
        return Value::from(i);
    }
    Value::from(-n.as_f64().unwrap_or(0.0))
}
