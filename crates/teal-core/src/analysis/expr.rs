//! The condition language of `successCondition` and `failureCondition`.
//!
//! A small expression language over `result`, the measured value, modelled on the
//! subset of Argo Rollouts' `expr` conditions that metrics use in practice:
//!
//! - literals: numbers (`0.99`, `500`, `1e3`), `true`, `false`, strings (`"ok"`, `'ok'`)
//! - `result`, `result[N]` (a negative `N` counts from the end), `len(x)`
//! - comparisons `== != < <= > >=` (not chained: `a < b < c` is refused), `&&`, `||`,
//!   `!` (also `and`, `or`, `not`), parentheses, arithmetic `+ - * /` (`+` also joins
//!   strings)
//! - functions `isNaN(x)`, `isInf(x)`, `asFloat(x)`, `asInt(x)` (the last two read a
//!   number from a string, as Argo's do)
//!
//! Conditions are parsed and type-checked when a template is applied
//! ([`Condition::parse`], with the types the metric's provider can produce), and
//! evaluated at run time ([`Condition::evaluate`]), where a value of an unexpected type
//! or an index out of range is an error for that measurement, never a panic. Every
//! error carries the 1-based column of the expression it is about.
//!
//! Argo's `expr` was not taken as is: a crate that fits (indexing, `len`, parsing
//! and checking before run time, small) does not exist, see the module
//! [`crate::analysis`].

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest condition accepted, in characters. Conditions are one line in practice; the
/// bound keeps evaluation's recursion shallow whatever the input.
pub const MAX_LENGTH: usize = 1000;

/// Deepest nesting of parentheses, brackets, calls and unary operators accepted.
const MAX_DEPTH: usize = 64;

/// A measured value: what `result` is when a condition is evaluated.
///
/// Serialized with its type as the key (`{"number": 0.99}`, `{"list": [1, 2]}`), and
/// non-finite numbers as `"NaN"`, `"+Inf"` and `"-Inf"`, so every value survives a
/// round trip through JSON (a Prometheus success rate of 0/0 is NaN).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Value {
    /// A number (every number is a 64-bit float, as in Prometheus).
    Number(#[serde(with = "finite_or_named")] f64),
    /// `true` or `false`.
    Bool(bool),
    /// Text.
    String(String),
    /// A list of numbers, such as a Prometheus instant vector.
    List(#[serde(with = "finite_or_named_list")] Vec<f64>),
}

impl Value {
    /// The value's type.
    pub fn types(&self) -> Types {
        match self {
            Value::Number(_) => Types::NUMBER,
            Value::Bool(_) => Types::BOOL,
            Value::String(_) => Types::STRING,
            Value::List(_) => Types::LIST,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Number(number) => write!(f, "{}", NumberText(*number)),
            Value::Bool(value) => write!(f, "{value}"),
            Value::String(text) => write!(f, "\"{}\"", text.escape_debug()),
            Value::List(numbers) => {
                write!(f, "[")?;
                for (index, number) in numbers.iter().enumerate() {
                    if index > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{}", NumberText(*number))?;
                }
                write!(f, "]")
            }
        }
    }
}

/// A number as people and Prometheus write it: `0.5`, `3`, `NaN`, `+Inf`.
struct NumberText(f64);

impl fmt::Display for NumberText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let number = self.0;
        if number.is_nan() {
            write!(f, "NaN")
        } else if number == f64::INFINITY {
            write!(f, "+Inf")
        } else if number == f64::NEG_INFINITY {
            write!(f, "-Inf")
        } else {
            write!(f, "{number}")
        }
    }
}

/// Serde for one f64 that may be NaN or infinite (JSON has no such numbers).
mod finite_or_named {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(number: &f64, serializer: S) -> Result<S::Ok, S::Error> {
        if number.is_finite() {
            serializer.serialize_f64(*number)
        } else {
            serializer.serialize_str(&super::NumberText(*number).to_string())
        }
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    pub enum Either {
        Number(f64),
        Name(String),
    }

    pub fn from_either<E: serde::de::Error>(either: Either) -> Result<f64, E> {
        match either {
            Either::Number(number) => Ok(number),
            Either::Name(name) => match name.as_str() {
                "NaN" => Ok(f64::NAN),
                "+Inf" => Ok(f64::INFINITY),
                "-Inf" => Ok(f64::NEG_INFINITY),
                other => Err(E::custom(format!(
                    "expected a number, \"NaN\", \"+Inf\" or \"-Inf\", found \"{other}\""
                ))),
            },
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
        from_either(Either::deserialize(deserializer)?)
    }
}

/// Serde for a list of f64 that may hold NaN or infinities.
mod finite_or_named_list {
    use serde::ser::SerializeSeq;
    use serde::{Deserialize, Deserializer, Serializer};

    use super::finite_or_named::{Either, from_either};

    struct One(f64);

    impl serde::Serialize for One {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            super::finite_or_named::serialize(&self.0, serializer)
        }
    }

    pub fn serialize<S: Serializer>(numbers: &[f64], serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(numbers.len()))?;
        for number in numbers {
            seq.serialize_element(&One(*number))?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<f64>, D::Error> {
        Vec::<Either>::deserialize(deserializer)?
            .into_iter()
            .map(from_either)
            .collect()
    }
}

/// A set of value types: what an expression (or `result`) may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Types(u8);

impl Types {
    /// A number.
    pub const NUMBER: Types = Types(1);
    /// `true` or `false`.
    pub const BOOL: Types = Types(2);
    /// Text.
    pub const STRING: Types = Types(4);
    /// A list of numbers.
    pub const LIST: Types = Types(8);
    /// Any of the above: what a web provider may answer.
    pub const ANY: Types = Types(15);

    /// Either type.
    pub const fn or(self, other: Types) -> Types {
        Types(self.0 | other.0)
    }

    /// The types in both.
    const fn and(self, other: Types) -> Types {
        Types(self.0 & other.0)
    }

    /// True when the two share a type.
    pub const fn overlaps(self, other: Types) -> bool {
        self.0 & other.0 != 0
    }

    fn is_none(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for Types {
    /// `a number`, `a number or a list`, `any value`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Types::ANY {
            return write!(f, "any value");
        }
        let names: Vec<&str> = [
            (Types::NUMBER, "a number"),
            (Types::BOOL, "a bool"),
            (Types::STRING, "a string"),
            (Types::LIST, "a list"),
        ]
        .iter()
        .filter(|(types, _)| self.overlaps(*types))
        .map(|(_, name)| *name)
        .collect();
        match names.as_slice() {
            [] => write!(f, "nothing"),
            [one] => write!(f, "{one}"),
            [init @ .., last] => write!(f, "{} or {last}", init.join(", ")),
        }
    }
}

/// A problem with an expression: where (1-based column, in characters) and what.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct ExprError {
    /// 1-based column, in characters, of the part of the expression at fault.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

fn error<T>(column: usize, message: impl Into<String>) -> Result<T, ExprError> {
    Err(ExprError {
        column,
        message: message.into(),
    })
}

/// The built-in functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Function {
    Len,
    IsNaN,
    IsInf,
    AsFloat,
    AsInt,
}

impl Function {
    const ALL: [(&'static str, Function); 5] = [
        ("len", Function::Len),
        ("isNaN", Function::IsNaN),
        ("isInf", Function::IsInf),
        ("asFloat", Function::AsFloat),
        ("asInt", Function::AsInt),
    ];

    fn name(self) -> &'static str {
        Function::ALL
            .iter()
            .find(|(_, function)| *function == self)
            .map_or("?", |(name, _)| name)
    }

    /// (argument types accepted, type returned)
    fn signature(self) -> (Types, Types) {
        match self {
            Function::Len => (Types::LIST.or(Types::STRING), Types::NUMBER),
            Function::IsNaN | Function::IsInf => (Types::NUMBER, Types::BOOL),
            Function::AsFloat | Function::AsInt => (Types::NUMBER.or(Types::STRING), Types::NUMBER),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum UnaryOp {
    Not,
    Negate,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BinaryOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
}

impl BinaryOp {
    fn precedence(self) -> u8 {
        match self {
            BinaryOp::Or => 1,
            BinaryOp::And => 2,
            BinaryOp::Eq
            | BinaryOp::Ne
            | BinaryOp::Lt
            | BinaryOp::Le
            | BinaryOp::Gt
            | BinaryOp::Ge => 3,
            BinaryOp::Add | BinaryOp::Sub => 4,
            BinaryOp::Mul | BinaryOp::Div => 5,
        }
    }

    fn is_comparison(self) -> bool {
        self.precedence() == 3
    }

    fn symbol(self) -> &'static str {
        match self {
            BinaryOp::Or => "||",
            BinaryOp::And => "&&",
            BinaryOp::Eq => "==",
            BinaryOp::Ne => "!=",
            BinaryOp::Lt => "<",
            BinaryOp::Le => "<=",
            BinaryOp::Gt => ">",
            BinaryOp::Ge => ">=",
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
        }
    }
}

/// One node of a parsed expression, with the column it starts at (for a binary
/// operation, the operator's column).
#[derive(Clone, Debug, PartialEq)]
struct Node {
    column: usize,
    kind: Kind,
}

#[derive(Clone, Debug, PartialEq)]
enum Kind {
    Number(f64),
    Bool(bool),
    String(String),
    Result,
    Index(Box<Node>, Box<Node>),
    Call(Function, Box<Node>),
    Unary(UnaryOp, Box<Node>),
    Binary(BinaryOp, Box<Node>, Box<Node>),
}

// ---------------------------------------------------------------------------------
// Tokens

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Number(f64),
    String(String),
    Name(String),
    Symbol(&'static str),
    End,
}

impl Token {
    /// The token as an error message names it.
    fn describe(&self) -> String {
        match self {
            Token::Number(number) => format!("the number {}", NumberText(*number)),
            Token::String(text) => format!("the string \"{}\"", text.escape_debug()),
            Token::Name(name) => format!("\"{name}\""),
            Token::Symbol(symbol) => format!("\"{symbol}\""),
            Token::End => "the end of the condition".to_owned(),
        }
    }
}

/// Symbols, longest first so `<=` wins over `<`.
const SYMBOLS: [&str; 18] = [
    "==", "!=", "<=", ">=", "&&", "||", "<", ">", "!", "+", "-", "*", "/", "(", ")", "[", "]", ",",
];

/// Splits the source into (column, token) pairs, ending with [`Token::End`].
fn tokenize(source: &str) -> Result<Vec<(usize, Token)>, ExprError> {
    let chars: Vec<char> = source.chars().collect();
    let mut tokens = Vec::new();
    let mut at = 0;
    while at < chars.len() {
        let column = at + 1;
        let c = chars[at];
        if c.is_whitespace() {
            at += 1;
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(at + 1).is_some_and(char::is_ascii_digit))
        {
            let (number, next) = number_literal(&chars, at)?;
            tokens.push((column, Token::Number(number)));
            at = next;
        } else if c == '"' || c == '\'' {
            let (text, next) = string_literal(&chars, at)?;
            tokens.push((column, Token::String(text)));
            at = next;
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = at;
            while at < chars.len() && (chars[at].is_ascii_alphanumeric() || chars[at] == '_') {
                at += 1;
            }
            tokens.push((column, Token::Name(chars[start..at].iter().collect())));
        } else if c == '{' && chars.get(at + 1) == Some(&'{') {
            return error(
                column,
                "arguments ({{args.NAME}}) are substituted in provider fields only, not in \
                 conditions",
            );
        } else if let Some(symbol) = SYMBOLS.iter().find(|symbol| {
            symbol
                .chars()
                .enumerate()
                .all(|(offset, s)| chars.get(at + offset) == Some(&s))
        }) {
            tokens.push((column, Token::Symbol(symbol)));
            at += symbol.chars().count();
        } else if c == '=' {
            return error(column, "unexpected \"=\"; to compare, use \"==\"");
        } else if c == '&' || c == '|' {
            return error(column, format!("unexpected \"{c}\"; use \"{c}{c}\""));
        } else {
            return error(
                column,
                format!("unexpected character \"{}\"", c.escape_debug()),
            );
        }
    }
    tokens.push((chars.len() + 1, Token::End));
    Ok(tokens)
}

/// `digits [. digits] [e [+-] digits]`, or `. digits ...`.
fn number_literal(chars: &[char], start: usize) -> Result<(f64, usize), ExprError> {
    let digits = |mut at: usize| {
        while at < chars.len() && chars[at].is_ascii_digit() {
            at += 1;
        }
        at
    };
    let mut at = digits(start);
    if chars.get(at) == Some(&'.') {
        let after = digits(at + 1);
        if after == at + 1 {
            return error(at + 2, "expected a digit after the decimal point");
        }
        at = after;
    }
    if matches!(chars.get(at), Some('e' | 'E')) {
        let mut exponent = at + 1;
        if matches!(chars.get(exponent), Some('+' | '-')) {
            exponent += 1;
        }
        let after = digits(exponent);
        if after == exponent {
            return error(exponent + 1, "expected the exponent's digits");
        }
        at = after;
    }
    if chars
        .get(at)
        .is_some_and(|c| c.is_ascii_alphabetic() || *c == '_')
    {
        return error(
            at + 1,
            format!("unexpected \"{}\" after a number", chars[at].escape_debug()),
        );
    }
    let text: String = chars[start..at].iter().collect();
    match text.parse::<f64>() {
        Ok(number) => Ok((number, at)),
        Err(_) => error(start + 1, format!("\"{text}\" is not a number")),
    }
}

/// A string in `"` or `'` with the escapes `\\ \" \' \n \t \r`.
fn string_literal(chars: &[char], start: usize) -> Result<(String, usize), ExprError> {
    let quote = chars[start];
    let mut text = String::new();
    let mut at = start + 1;
    loop {
        match chars.get(at) {
            None => return error(start + 1, "this string has no closing quote"),
            Some(c) if *c == quote => return Ok((text, at + 1)),
            Some('\\') => {
                let escaped = match chars.get(at + 1) {
                    Some('\\') => '\\',
                    Some('"') => '"',
                    Some('\'') => '\'',
                    Some('n') => '\n',
                    Some('t') => '\t',
                    Some('r') => '\r',
                    Some(other) => {
                        return error(
                            at + 1,
                            format!("unknown escape \"\\{}\"", other.escape_debug()),
                        );
                    }
                    None => return error(start + 1, "this string has no closing quote"),
                };
                text.push(escaped);
                at += 2;
            }
            Some(c) => {
                text.push(*c);
                at += 1;
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Parsing: precedence climbing over the tokens.

struct Parser {
    tokens: Vec<(usize, Token)>,
    at: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> &(usize, Token) {
        // The last token is always End, and `at` never moves past it.
        &self.tokens[self.at.min(self.tokens.len() - 1)]
    }

    fn advance(&mut self) -> (usize, Token) {
        let token = self.peek().clone();
        if self.at < self.tokens.len() - 1 {
            self.at += 1;
        }
        token
    }

    fn is_symbol(&self, symbol: &str) -> bool {
        matches!(&self.peek().1, Token::Symbol(found) if *found == symbol)
    }

    fn expect_symbol(&mut self, symbol: &str, context: &str) -> Result<(), ExprError> {
        if self.is_symbol(symbol) {
            self.advance();
            return Ok(());
        }
        let (column, token) = self.peek();
        error(
            *column,
            format!(
                "expected \"{symbol}\" {context}, found {}",
                token.describe()
            ),
        )
    }

    fn enter(&mut self, column: usize) -> Result<(), ExprError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return error(
                column,
                format!("the condition nests more than {MAX_DEPTH} levels deep"),
            );
        }
        Ok(())
    }

    fn binary_op(&self) -> Option<BinaryOp> {
        match &self.peek().1 {
            Token::Symbol(symbol) => Some(match *symbol {
                "||" => BinaryOp::Or,
                "&&" => BinaryOp::And,
                "==" => BinaryOp::Eq,
                "!=" => BinaryOp::Ne,
                "<" => BinaryOp::Lt,
                "<=" => BinaryOp::Le,
                ">" => BinaryOp::Gt,
                ">=" => BinaryOp::Ge,
                "+" => BinaryOp::Add,
                "-" => BinaryOp::Sub,
                "*" => BinaryOp::Mul,
                "/" => BinaryOp::Div,
                _ => return None,
            }),
            Token::Name(name) if name == "or" => Some(BinaryOp::Or),
            Token::Name(name) if name == "and" => Some(BinaryOp::And),
            _ => None,
        }
    }

    /// Binary operations whose operators bind at least as tightly as `min`.
    fn expression(&mut self, min: u8) -> Result<Node, ExprError> {
        let mut left = self.unary()?;
        while let Some(op) = self.binary_op() {
            let precedence = op.precedence();
            if precedence < min {
                break;
            }
            let (column, _) = self.advance();
            let right = self.expression(precedence + 1)?;
            left = Node {
                column,
                kind: Kind::Binary(op, Box::new(left), Box::new(right)),
            };
            if op.is_comparison()
                && let Some(next) = self.binary_op()
                && next.is_comparison()
            {
                let (column, _) = self.peek();
                return error(
                    *column,
                    format!(
                        "comparisons cannot be chained: join \"{}\" and \"{}\" with \"&&\"",
                        op.symbol(),
                        next.symbol()
                    ),
                );
            }
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Node, ExprError> {
        let (column, token) = self.peek().clone();
        let op = match &token {
            Token::Symbol("!") => Some(UnaryOp::Not),
            Token::Symbol("-") => Some(UnaryOp::Negate),
            Token::Name(name) if name == "not" => Some(UnaryOp::Not),
            _ => None,
        };
        let Some(op) = op else {
            return self.postfix();
        };
        self.advance();
        self.enter(column)?;
        let operand = self.unary()?;
        self.depth -= 1;
        Ok(Node {
            column,
            kind: Kind::Unary(op, Box::new(operand)),
        })
    }

    /// A primary followed by any number of `[index]`.
    fn postfix(&mut self) -> Result<Node, ExprError> {
        let mut node = self.primary()?;
        while self.is_symbol("[") {
            let (column, _) = self.advance();
            self.enter(column)?;
            let index = self.expression(0)?;
            self.expect_symbol("]", "to close the index")?;
            self.depth -= 1;
            node = Node {
                column,
                kind: Kind::Index(Box::new(node), Box::new(index)),
            };
        }
        Ok(node)
    }

    fn primary(&mut self) -> Result<Node, ExprError> {
        let (column, token) = self.advance();
        let kind = match token {
            Token::Number(number) => Kind::Number(number),
            Token::String(text) => Kind::String(text),
            Token::Symbol("(") => {
                self.enter(column)?;
                let inner = self.expression(0)?;
                self.expect_symbol(")", "to close the \"(\"")?;
                self.depth -= 1;
                return Ok(inner);
            }
            Token::Name(name) => match name.as_str() {
                "result" => Kind::Result,
                "true" => Kind::Bool(true),
                "false" => Kind::Bool(false),
                _ => {
                    let function = Function::ALL
                        .iter()
                        .find(|(known, _)| *known == name)
                        .map(|(_, function)| *function);
                    if let Some(function) = function {
                        self.expect_symbol("(", &format!("after {name}"))?;
                        self.enter(column)?;
                        let argument = self.expression(0)?;
                        if self.is_symbol(",") {
                            let (comma, _) = self.peek();
                            return error(*comma, format!("{name} takes one argument"));
                        }
                        self.expect_symbol(")", &format!("to close {name}("))?;
                        self.depth -= 1;
                        Kind::Call(function, Box::new(argument))
                    } else if self.is_symbol("(") {
                        let names: Vec<&str> =
                            Function::ALL.iter().map(|(known, _)| *known).collect();
                        return error(
                            column,
                            format!(
                                "unknown function \"{name}\", expected one of: {}",
                                names.join(", ")
                            ),
                        );
                    } else {
                        return error(
                            column,
                            format!(
                                "unknown name \"{name}\": the measured value is called \
                                 \"result\""
                            ),
                        );
                    }
                }
            },
            Token::End => return error(column, "expected a value, found the end of the condition"),
            other => {
                return error(
                    column,
                    format!("expected a value, found {}", other.describe()),
                );
            }
        };
        Ok(Node { column, kind })
    }
}

// ---------------------------------------------------------------------------------
// Type checking

fn check(node: &Node, result: Types) -> Result<Types, ExprError> {
    let expect = |operand: &Node, found: Types, wanted: Types, role: &str| {
        if found.overlaps(wanted) {
            Ok(())
        } else {
            error(
                operand.column,
                format!("{role} must be {wanted}, but this is {found}"),
            )
        }
    };
    match &node.kind {
        Kind::Number(_) => Ok(Types::NUMBER),
        Kind::Bool(_) => Ok(Types::BOOL),
        Kind::String(_) => Ok(Types::STRING),
        Kind::Result => Ok(result),
        Kind::Index(target, index) => {
            let target_types = check(target, result)?;
            if !target_types.overlaps(Types::LIST) {
                return error(
                    node.column,
                    format!("only a list can be indexed, but this is {target_types}"),
                );
            }
            let index_types = check(index, result)?;
            expect(index, index_types, Types::NUMBER, "an index")?;
            Ok(Types::NUMBER)
        }
        Kind::Call(function, argument) => {
            let (accepts, returns) = function.signature();
            let found = check(argument, result)?;
            expect(
                argument,
                found,
                accepts,
                &format!("the argument of {}", function.name()),
            )?;
            Ok(returns)
        }
        Kind::Unary(op, operand) => {
            let found = check(operand, result)?;
            match op {
                UnaryOp::Not => {
                    expect(operand, found, Types::BOOL, "the operand of \"!\"")?;
                    Ok(Types::BOOL)
                }
                UnaryOp::Negate => {
                    expect(operand, found, Types::NUMBER, "the operand of \"-\"")?;
                    Ok(Types::NUMBER)
                }
            }
        }
        Kind::Binary(op, left, right) => {
            let left_types = check(left, result)?;
            let right_types = check(right, result)?;
            let symbol = op.symbol();
            let both = |wanted: Types| -> Result<(), ExprError> {
                expect(
                    left,
                    left_types,
                    wanted,
                    &format!("the left side of \"{symbol}\""),
                )?;
                expect(
                    right,
                    right_types,
                    wanted,
                    &format!("the right side of \"{symbol}\""),
                )
            };
            // Types each side can share for an operation defined on `wanted` pairs.
            let shared = |wanted: Types| left_types.and(right_types).and(wanted);
            let mismatch = || {
                error(
                    node.column,
                    format!("\"{symbol}\" cannot combine {left_types} with {right_types}"),
                )
            };
            match op {
                BinaryOp::Or | BinaryOp::And => {
                    both(Types::BOOL)?;
                    Ok(Types::BOOL)
                }
                BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div => {
                    both(Types::NUMBER)?;
                    Ok(Types::NUMBER)
                }
                BinaryOp::Add => {
                    let types = shared(Types::NUMBER.or(Types::STRING));
                    if types.is_none() {
                        return mismatch();
                    }
                    Ok(types)
                }
                BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge => {
                    if shared(Types::NUMBER.or(Types::STRING)).is_none() {
                        return mismatch();
                    }
                    Ok(Types::BOOL)
                }
                BinaryOp::Eq | BinaryOp::Ne => {
                    if shared(Types::ANY).is_none() {
                        return mismatch();
                    }
                    Ok(Types::BOOL)
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Evaluation

fn type_name(value: &Value) -> String {
    value.types().to_string()
}

fn evaluate(node: &Node, result: &Value) -> Result<Value, ExprError> {
    let number = |operand: &Node, value: Value, role: &str| match value {
        Value::Number(number) => Ok(number),
        other => error(
            operand.column,
            format!(
                "{role} must be a number, but it is {} ({other})",
                type_name(&other)
            ),
        ),
    };
    let boolean = |operand: &Node, value: Value, role: &str| match value {
        Value::Bool(value) => Ok(value),
        other => error(
            operand.column,
            format!(
                "{role} must be a bool, but it is {} ({other})",
                type_name(&other)
            ),
        ),
    };
    match &node.kind {
        Kind::Number(number) => Ok(Value::Number(*number)),
        Kind::Bool(value) => Ok(Value::Bool(*value)),
        Kind::String(text) => Ok(Value::String(text.clone())),
        Kind::Result => Ok(result.clone()),
        Kind::Index(target, index) => {
            let list = match evaluate(target, result)? {
                Value::List(list) => list,
                other => {
                    return error(
                        node.column,
                        format!(
                            "only a list can be indexed, but this is {} ({other})",
                            type_name(&other)
                        ),
                    );
                }
            };
            let position = number(index, evaluate(index, result)?, "an index")?;
            if position.fract() != 0.0 || !position.is_finite() {
                return error(
                    index.column,
                    format!(
                        "an index must be a whole number, found {}",
                        NumberText(position)
                    ),
                );
            }
            let len = list.len() as f64;
            let from_start = if position < 0.0 {
                len + position
            } else {
                position
            };
            if from_start < 0.0 || from_start >= len {
                return error(
                    index.column,
                    format!(
                        "index {} is out of range for a list of {} element{}",
                        NumberText(position),
                        list.len(),
                        if list.len() == 1 { "" } else { "s" }
                    ),
                );
            }
            // In range of a Vec's length, so the cast is exact.
            Ok(Value::Number(list[from_start as usize]))
        }
        Kind::Call(function, argument) => {
            let value = evaluate(argument, result)?;
            let role = format!("the argument of {}", function.name());
            match function {
                Function::Len => match value {
                    Value::List(list) => Ok(Value::Number(list.len() as f64)),
                    Value::String(text) => Ok(Value::Number(text.chars().count() as f64)),
                    other => error(
                        argument.column,
                        format!(
                            "{role} must be a list or a string, but it is {} ({other})",
                            type_name(&other)
                        ),
                    ),
                },
                Function::IsNaN => Ok(Value::Bool(number(argument, value, &role)?.is_nan())),
                Function::IsInf => Ok(Value::Bool(number(argument, value, &role)?.is_infinite())),
                Function::AsFloat | Function::AsInt => {
                    let parsed = match value {
                        Value::Number(number) => number,
                        Value::String(text) => {
                            let trimmed = text.trim();
                            let parsed = if *function == Function::AsInt {
                                trimmed.parse::<i64>().map(|n| n as f64).ok()
                            } else {
                                trimmed.parse::<f64>().ok()
                            };
                            match parsed {
                                Some(number) => number,
                                None => {
                                    return error(
                                        argument.column,
                                        format!(
                                            "{} cannot read a number from \"{}\"",
                                            function.name(),
                                            text.escape_debug()
                                        ),
                                    );
                                }
                            }
                        }
                        other => {
                            return error(
                                argument.column,
                                format!(
                                    "{role} must be a number or a string, but it is {} \
                                     ({other})",
                                    type_name(&other)
                                ),
                            );
                        }
                    };
                    Ok(Value::Number(if *function == Function::AsInt {
                        parsed.trunc()
                    } else {
                        parsed
                    }))
                }
            }
        }
        Kind::Unary(op, operand) => {
            let value = evaluate(operand, result)?;
            match op {
                UnaryOp::Not => Ok(Value::Bool(!boolean(
                    operand,
                    value,
                    "the operand of \"!\"",
                )?)),
                UnaryOp::Negate => Ok(Value::Number(-number(
                    operand,
                    value,
                    "the operand of \"-\"",
                )?)),
            }
        }
        Kind::Binary(op, left, right) => {
            let symbol = op.symbol();
            let left_role = format!("the left side of \"{symbol}\"");
            let right_role = format!("the right side of \"{symbol}\"");
            match op {
                BinaryOp::And | BinaryOp::Or => {
                    let first = boolean(left, evaluate(left, result)?, &left_role)?;
                    // Short-circuit: `len(result) > 0 && result[0] > 1` is safe.
                    if first == (*op == BinaryOp::Or) {
                        return Ok(Value::Bool(first));
                    }
                    Ok(Value::Bool(boolean(
                        right,
                        evaluate(right, result)?,
                        &right_role,
                    )?))
                }
                _ => {
                    let a = evaluate(left, result)?;
                    let b = evaluate(right, result)?;
                    binary(node, *op, a, b)
                }
            }
        }
    }
}

/// A binary operation other than `&&` and `||`, on two evaluated operands.
fn binary(node: &Node, op: BinaryOp, a: Value, b: Value) -> Result<Value, ExprError> {
    use std::cmp::Ordering;

    let symbol = op.symbol();
    let mismatch = |a: &Value, b: &Value| {
        error(
            node.column,
            format!(
                "\"{symbol}\" cannot combine {} ({a}) with {} ({b})",
                type_name(a),
                type_name(b)
            ),
        )
    };
    match op {
        BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div => match (&a, &b) {
            (Value::Number(x), Value::Number(y)) => Ok(Value::Number(match op {
                BinaryOp::Add => x + y,
                BinaryOp::Sub => x - y,
                BinaryOp::Mul => x * y,
                // Float division, as Argo's expr: x/0 is ±Inf (or NaN for 0/0).
                _ => x / y,
            })),
            (Value::String(x), Value::String(y)) if op == BinaryOp::Add => {
                Ok(Value::String(format!("{x}{y}")))
            }
            _ => mismatch(&a, &b),
        },
        BinaryOp::Eq | BinaryOp::Ne => {
            let equal = match (&a, &b) {
                (Value::Number(x), Value::Number(y)) => x == y,
                (Value::Bool(x), Value::Bool(y)) => x == y,
                (Value::String(x), Value::String(y)) => x == y,
                (Value::List(x), Value::List(y)) => x == y,
                _ => return mismatch(&a, &b),
            };
            Ok(Value::Bool(equal == (op == BinaryOp::Eq)))
        }
        _ => {
            let ordering = match (&a, &b) {
                // NaN compares with nothing: every ordering comparison is false.
                (Value::Number(x), Value::Number(y)) => x.partial_cmp(y),
                (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
                _ => return mismatch(&a, &b),
            };
            let holds = match ordering {
                None => false,
                Some(ordering) => match op {
                    BinaryOp::Lt => ordering == Ordering::Less,
                    BinaryOp::Le => ordering != Ordering::Greater,
                    BinaryOp::Gt => ordering == Ordering::Greater,
                    _ => ordering != Ordering::Less,
                },
            };
            Ok(Value::Bool(holds))
        }
    }
}

// ---------------------------------------------------------------------------------
// Public API

/// A parsed expression, not yet checked against the type of `result`.
#[derive(Clone, Debug, PartialEq)]
pub struct Expression {
    root: Node,
}

impl Expression {
    /// Parses `source`; the error gives the column of the first problem.
    pub fn parse(source: &str) -> Result<Expression, ExprError> {
        if source.chars().count() > MAX_LENGTH {
            return error(
                MAX_LENGTH + 1,
                format!("a condition may be at most {MAX_LENGTH} characters long"),
            );
        }
        let tokens = tokenize(source)?;
        let mut parser = Parser {
            tokens,
            at: 0,
            depth: 0,
        };
        let root = parser.expression(0)?;
        let (column, token) = parser.peek();
        if *token != Token::End {
            return error(
                *column,
                format!(
                    "expected an operator or the end of the condition, found {}",
                    token.describe()
                ),
            );
        }
        Ok(Expression { root })
    }

    /// The types the expression can produce when `result` has one of `result`'s types,
    /// or the first operation that can never work.
    pub fn check(&self, result: Types) -> Result<Types, ExprError> {
        check(&self.root, result)
    }

    /// Evaluates the expression with `result` bound to the measured value.
    pub fn evaluate(&self, result: &Value) -> Result<Value, ExprError> {
        evaluate(&self.root, result)
    }
}

/// A `successCondition` or `failureCondition`: an expression that gives a bool.
///
/// Serialized as its source text; deserializing parses it again (without knowing the
/// provider, so only the syntax is checked then).
#[derive(Clone, Debug)]
pub struct Condition {
    source: String,
    expression: Expression,
}

impl Condition {
    /// Parses `source` and checks that it gives a bool when `result` has one of the
    /// types in `result` (the types the metric's provider produces).
    pub fn parse(source: &str, result: Types) -> Result<Condition, ExprError> {
        let expression = Expression::parse(source)?;
        let types = expression.check(result)?;
        if !types.overlaps(Types::BOOL) {
            return error(
                1,
                format!("a condition must give true or false, but this gives {types}"),
            );
        }
        Ok(Condition {
            source: source.to_owned(),
            expression,
        })
    }

    /// The condition as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the condition holds for the measured value. An error (a value of the
    /// wrong type, an index out of range) says where and why.
    pub fn evaluate(&self, result: &Value) -> Result<bool, ExprError> {
        match self.expression.evaluate(result)? {
            Value::Bool(holds) => Ok(holds),
            other => error(
                1,
                format!(
                    "a condition must give true or false, but this gave {} ({other})",
                    type_name(&other)
                ),
            ),
        }
    }
}

impl PartialEq for Condition {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl Serialize for Condition {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for Condition {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let source = String::deserialize(deserializer)?;
        Condition::parse(&source, Types::ANY)
            .map_err(|e| serde::de::Error::custom(format!("condition \"{source}\": {e}")))
    }
}

#[cfg(test)]
mod tests;
