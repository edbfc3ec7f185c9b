//! Python literals → [`Value`], for command lines and configuration files.
//!
//! `rpyc call ADDR add 1 2.5` must turn its arguments into the values a
//! Python caller would have passed, and a user types them the way Python
//! prints them. This is the subset of Python's `ast.literal_eval` that brine
//! can carry, plus the spellings `repr()` produces that are not literals
//! (`inf`, `nan`, `(inf+nanj)`):
//!
//! | input | value |
//! |---|---|
//! | `42`, `-7`, `0x1f`, `0o17`, `0b101`, `1_000`, `123456789012345678901234567890` | `int` (unbounded) |
//! | `1.5`, `.5`, `1e-3`, `inf`, `-inf`, `nan`, `float('inf')` | `float` |
//! | `2j`, `1+2j`, `(1.5-2j)`, `infj` | `complex` |
//! | `'text'`, `"it's"`, `'tab\t\u00e9'`, `r'\raw'`, `'a' 'b'` | `str` |
//! | `b'\x00bytes'`, `rb'\d'` | `bytes` |
//! | `()`, `(1,)`, `(1, 'a', None)`, `1, 2` | `tuple` |
//! | `frozenset()`, `frozenset({1, 2})`, `frozenset((1, 2))` | `frozenset` |
//! | `None`, `True`, `False`, `...`, `Ellipsis` | themselves |
//!
//! Lists, dicts and sets are refused with a hint: they travel by reference
//! in RPyC, so there is no value to build. Nothing is evaluated; the parser
//! is a plain recursive descent with a nesting limit ([`MAX_DEPTH`]) and
//! CPython's 4300-digit limit on decimal integers, so hostile input cannot
//! exhaust the stack or the CPU. Errors name the column (counted in
//! characters, from 1) where the problem is.

use super::value::{Int, Value};
use num_bigint::BigInt;
use num_traits::Num;
use thiserror::Error;

/// Deepest nesting of tuples and frozensets accepted.
pub const MAX_DEPTH: usize = 64;

/// Most digits in one integer literal (CPython's `int(str)` limit since 3.11).
pub const MAX_INT_DIGITS: usize = 4300;

/// Why a text is not a literal this parser accepts.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("{message} at column {column}")]
pub struct LiteralError {
    /// 1-based column, in characters, where the problem was found.
    pub column: usize,
    /// What is wrong, in lowercase.
    pub message: String,
}

impl LiteralError {
    /// The input with a caret under the offending column, for terminals:
    ///
    /// ```text
    /// (1, 'a
    ///     ^
    /// ```
    pub fn caret(&self, input: &str) -> String {
        let line: String = input.chars().map(|c| if c == '\n' || c == '\r' { ' ' } else { c }).collect();
        format!("{line}\n{}^", " ".repeat(self.column.saturating_sub(1)))
    }
}

/// Parses one Python literal (see the module docs for what is accepted).
///
/// ```
/// use rpyc::wire::{literal, Value};
/// assert_eq!(literal::parse("(1, 'a')").unwrap(), Value::Tuple(vec![1.into(), "a".into()]));
/// assert_eq!(literal::parse("-2.5").unwrap(), Value::Float(-2.5));
/// assert!(literal::parse("[1, 2]").is_err());
/// ```
pub fn parse(text: &str) -> Result<Value, LiteralError> {
    let mut p = Parser { s: text.chars().collect(), pos: 0 };
    p.ws();
    if p.at_end() {
        return Err(p.err("empty input: expected a literal such as 42, 'text' or None"));
    }
    let first = p.expr(0)?;
    p.ws();
    // `1, 2` at the top level is a tuple, as in `ast.literal_eval`.
    let v = if p.peek() == Some(',') {
        p.bump();
        let mut items = vec![first];
        p.ws();
        while !p.at_end() {
            items.push(p.expr(1)?);
            p.ws();
            match p.peek() {
                Some(',') => {
                    p.bump();
                    p.ws();
                }
                None => break,
                Some(c) => return Err(p.err(format!("expected ',' between tuple items, found {c:?}"))),
            }
        }
        Value::Tuple(items)
    } else {
        first
    };
    p.ws();
    match p.peek() {
        None => Ok(v),
        Some(c) => Err(p.err(format!("unexpected {c:?} after the literal"))),
    }
}

struct Parser {
    s: Vec<char>,
    pos: usize,
}

/// A parsed number before signs and `+`/`-` complex arithmetic are applied.
#[derive(Clone, Debug)]
enum Parsed {
    Int(BigInt),
    Float(f64),
    Imag(f64),
}

impl Parser {
    fn err(&self, message: impl Into<String>) -> LiteralError {
        self.err_at(self.pos, message)
    }

    fn err_at(&self, pos: usize, message: impl Into<String>) -> LiteralError {
        LiteralError { column: pos + 1, message: message.into() }
    }

    fn peek(&self) -> Option<char> {
        self.s.get(self.pos).copied()
    }

    fn peek_at(&self, n: usize) -> Option<char> {
        self.s.get(self.pos + n).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    fn at_end(&self) -> bool {
        self.pos >= self.s.len()
    }

    fn ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char, what: &str) -> Result<(), LiteralError> {
        self.ws();
        if self.eat(c) {
            Ok(())
        } else {
            match self.peek() {
                Some(found) => Err(self.err(format!("expected {c:?} {what}, found {found:?}"))),
                None => Err(self.err(format!("expected {c:?} {what}, found the end of the input"))),
            }
        }
    }

    /// One value: an atom, or a signed number possibly followed by `± imag`.
    fn expr(&mut self, depth: usize) -> Result<Value, LiteralError> {
        self.ws();
        let start = self.pos;
        match self.peek() {
            Some('+' | '-') => {
                let left = self.signed_number()?;
                self.complex_tail(left, start)
            }
            Some(c) if c.is_ascii_digit() => {
                let left = self.signed_number()?;
                self.complex_tail(left, start)
            }
            Some('.') if self.peek_at(1).is_some_and(|c| c.is_ascii_digit()) => {
                let left = self.signed_number()?;
                self.complex_tail(left, start)
            }
            Some('.') => {
                if self.peek_at(1) == Some('.') && self.peek_at(2) == Some('.') {
                    self.pos += 3;
                    Ok(Value::Ellipsis)
                } else {
                    Err(self.err("unexpected '.'"))
                }
            }
            Some('(') => self.paren(depth),
            Some('[') => Err(self.err(
                "lists are not supported: a list travels by reference in RPyC; pass a tuple instead, \
                 e.g. (1, 2)",
            )),
            Some('{') => Err(self.err(
                "dicts and sets are not supported: they travel by reference in RPyC; pass a tuple \
                 or frozenset({...}) instead",
            )),
            Some('\'' | '"') => self.strings(),
            Some(c) if c.is_alphabetic() || c == '_' => {
                if self.string_prefix_len().is_some() {
                    return self.strings();
                }
                let name = self.ident();
                match name.as_str() {
                    "inf" | "nan" | "infj" | "nanj" => {
                        self.pos = start;
                        let left = self.signed_number()?;
                        self.complex_tail(left, start)
                    }
                    _ => self.named(&name, start, depth),
                }
            }
            Some(c) => Err(self.err(format!("unexpected {c:?}: expected a literal"))),
            None => Err(self.err("unexpected end of the input: expected a literal")),
        }
    }

    fn ident(&mut self) -> String {
        let mut name = String::new();
        while let Some(c) = self.peek() {
            if c.is_alphanumeric() || c == '_' {
                name.push(c);
                self.pos += 1;
            } else {
                break;
            }
        }
        name
    }

    fn named(&mut self, name: &str, start: usize, depth: usize) -> Result<Value, LiteralError> {
        match name {
            "None" => Ok(Value::None),
            "True" => Ok(Value::Bool(true)),
            "False" => Ok(Value::Bool(false)),
            "Ellipsis" => Ok(Value::Ellipsis),
            "NotImplemented" => Ok(Value::NotImplemented),
            "frozenset" => self.frozenset(depth),
            "float" => self.float_call(),
            "none" | "null" | "nil" => Err(self.err_at(start, format!("unknown name {name:?}: Python spells it None"))),
            "true" | "false" => {
                let fixed = if name == "true" { "True" } else { "False" };
                Err(self.err_at(start, format!("unknown name {name:?}: Python spells it {fixed}")))
            }
            _ => Err(self.err_at(
                start,
                format!(
                    "{name:?} is not a literal; to pass it as a string, quote it: '{name}' (in a shell: \
                     \"'{name}'\")"
                ),
            )),
        }
    }

    // ----- numbers ---------------------------------------------------------

    fn signed_number(&mut self) -> Result<Parsed, LiteralError> {
        let mut negative = false;
        let mut signs = 0;
        while let Some(c @ ('+' | '-')) = self.peek() {
            signs += 1;
            if signs > 1 {
                return Err(self.err("more than one sign before a number"));
            }
            negative ^= c == '-';
            self.pos += 1;
            self.ws();
        }
        let n = self.unsigned_number()?;
        Ok(if negative {
            match n {
                Parsed::Int(i) => Parsed::Int(-i),
                Parsed::Float(f) => Parsed::Float(-f),
                Parsed::Imag(f) => Parsed::Imag(-f),
            }
        } else {
            n
        })
    }

    /// `-2j` is `-(0+2j)` in Python: both parts are negated.
    fn finish(n: Parsed, negated_imag: bool) -> Value {
        match n {
            Parsed::Int(i) => Value::Int(Int::from_big(i)),
            Parsed::Float(f) => Value::Float(f),
            Parsed::Imag(f) => Value::Complex(if negated_imag { -0.0 } else { 0.0 }, f),
        }
    }

    /// After a (signed) real number, an optional `+ imag` / `- imag`.
    fn complex_tail(&mut self, left: Parsed, start: usize) -> Result<Value, LiteralError> {
        let left_negated = self.s.get(start) == Some(&'-');
        let save = self.pos;
        self.ws();
        let op = match self.peek() {
            Some(c @ ('+' | '-')) => c,
            _ => {
                self.pos = save;
                return Ok(Self::finish(left, left_negated));
            }
        };
        let op_pos = self.pos;
        self.pos += 1;
        self.ws();
        let right = self.unsigned_number()?;
        let real = match left {
            Parsed::Int(i) => num_traits::ToPrimitive::to_f64(&i).unwrap_or(f64::INFINITY),
            Parsed::Float(f) => f,
            Parsed::Imag(_) => {
                return Err(self.err_at(op_pos, "the left side of a complex literal must be real, e.g. 1+2j"))
            }
        };
        let imag = match right {
            Parsed::Imag(f) => f,
            _ => return Err(self.err_at(op_pos, "only a complex literal may use + or -, e.g. 1+2j")),
        };
        // Python promotes both sides to complex(x, 0.0) and adds part by part.
        Ok(if op == '+' { Value::Complex(real + 0.0, 0.0 + imag) } else { Value::Complex(real - 0.0, 0.0 - imag) })
    }

    fn unsigned_number(&mut self) -> Result<Parsed, LiteralError> {
        let start = self.pos;
        match self.peek() {
            Some(c) if c.is_alphabetic() => {
                let name = self.ident();
                return match name.as_str() {
                    "inf" => Ok(Parsed::Float(f64::INFINITY)),
                    "nan" => Ok(Parsed::Float(f64::NAN)),
                    "infj" => Ok(Parsed::Imag(f64::INFINITY)),
                    "nanj" => Ok(Parsed::Imag(f64::NAN)),
                    _ => Err(self.err_at(start, format!("expected a number, found {name:?}"))),
                };
            }
            Some(c) if c.is_ascii_digit() || c == '.' => {}
            Some(c) => return Err(self.err(format!("expected a number, found {c:?}"))),
            None => return Err(self.err("expected a number, found the end of the input")),
        }
        if self.peek() == Some('0') {
            let radix = match self.peek_at(1) {
                Some('x' | 'X') => Some(16),
                Some('o' | 'O') => Some(8),
                Some('b' | 'B') => Some(2),
                _ => None,
            };
            if let Some(radix) = radix {
                self.pos += 2;
                return self.radix_int(radix, start);
            }
        }
        let int_part = self.digits(start)?;
        let mut is_float = false;
        let mut text = int_part.clone();
        if self.peek() == Some('.') {
            is_float = true;
            self.pos += 1;
            text.push('.');
            if self.peek().is_some_and(|c| c.is_ascii_digit()) {
                text.push_str(&self.digits(start)?);
            }
        }
        if matches!(self.peek(), Some('e' | 'E'))
            && (self.peek_at(1).is_some_and(|c| c.is_ascii_digit())
                || (matches!(self.peek_at(1), Some('+' | '-')) && self.peek_at(2).is_some_and(|c| c.is_ascii_digit())))
        {
            is_float = true;
            self.pos += 1;
            text.push('e');
            if let Some(sign @ ('+' | '-')) = self.peek() {
                text.push(sign);
                self.pos += 1;
            }
            text.push_str(&self.digits(start)?);
        }
        if matches!(self.peek(), Some('j' | 'J')) {
            self.pos += 1;
            self.no_trailing_name(start)?;
            let f: f64 = float_of(&text).ok_or_else(|| self.err_at(start, "invalid imaginary literal"))?;
            return Ok(Parsed::Imag(f));
        }
        self.no_trailing_name(start)?;
        if is_float {
            let f = float_of(&text).ok_or_else(|| self.err_at(start, "invalid float literal"))?;
            return Ok(Parsed::Float(f));
        }
        if int_part.len() > 1 && int_part.starts_with('0') && int_part.chars().any(|c| c != '0') {
            return Err(self.err_at(
                start,
                "leading zeros in decimal integer literals are not permitted; use an 0o prefix for octal integers",
            ));
        }
        if int_part.len() > MAX_INT_DIGITS {
            return Err(self
                .err_at(start, format!("integer of {} digits exceeds the limit of {MAX_INT_DIGITS}", int_part.len())));
        }
        BigInt::from_str_radix(&int_part, 10)
            .map(Parsed::Int)
            .map_err(|_| self.err_at(start, "invalid integer literal"))
    }

    /// ASCII digits with single underscores between them; returns them without underscores.
    fn digits(&mut self, start: usize) -> Result<String, LiteralError> {
        let mut out = String::new();
        let mut last_underscore = false;
        while let Some(c) = self.peek() {
            if c.is_ascii_digit() {
                out.push(c);
                last_underscore = false;
            } else if c == '_' && !out.is_empty() && !last_underscore {
                last_underscore = true;
            } else {
                break;
            }
            self.pos += 1;
        }
        if last_underscore {
            return Err(self.err_at(start, "invalid decimal literal: an underscore must be followed by a digit"));
        }
        Ok(out)
    }

    fn radix_int(&mut self, radix: u32, start: usize) -> Result<Parsed, LiteralError> {
        let mut text = String::new();
        let mut last_underscore = true; // `0x_1` is valid, `0x__1` is not
        let mut underscore_allowed = true;
        while let Some(c) = self.peek() {
            if c.is_digit(radix) {
                text.push(c);
                last_underscore = false;
                underscore_allowed = true;
            } else if c == '_' && underscore_allowed {
                underscore_allowed = false;
                last_underscore = true;
            } else {
                break;
            }
            self.pos += 1;
        }
        let name = match radix {
            16 => "hexadecimal",
            8 => "octal",
            _ => "binary",
        };
        if text.is_empty() || last_underscore {
            return Err(self.err_at(start, format!("invalid {name} literal")));
        }
        if self.peek().is_some_and(|c| c.is_ascii_alphanumeric()) {
            return Err(self.err(format!("invalid digit {:?} in {name} literal", self.peek().unwrap_or('?'))));
        }
        // Bound the work like the decimal limit does (4 bits per hex digit…).
        if text.len() > MAX_INT_DIGITS * 4 {
            return Err(self.err_at(start, format!("{name} integer of {} digits is too long", text.len())));
        }
        BigInt::from_str_radix(&text, radix)
            .map(Parsed::Int)
            .map_err(|_| self.err_at(start, format!("invalid {name} literal")))
    }

    fn no_trailing_name(&self, start: usize) -> Result<(), LiteralError> {
        match self.peek() {
            Some(c) if c.is_alphanumeric() || c == '_' => {
                Err(self.err_at(start, format!("invalid number literal: unexpected {c:?} after the digits")))
            }
            _ => Ok(()),
        }
    }

    /// `float('inf')`, `float("-nan")`, `float('1.5')`, `float(2)`.
    fn float_call(&mut self) -> Result<Value, LiteralError> {
        self.expect('(', "after float")?;
        self.ws();
        let arg_pos = self.pos;
        let v = match self.peek() {
            Some('\'' | '"') => match self.strings()? {
                Value::Str(s) => python_float(&s).ok_or_else(|| {
                    self.err_at(arg_pos, format!("could not convert string to float: {}", Value::Str(s.clone()).repr()))
                })?,
                _ => return Err(self.err_at(arg_pos, "float() takes a str or a number here")),
            },
            _ => match self.signed_number()? {
                Parsed::Int(i) => num_traits::ToPrimitive::to_f64(&i).unwrap_or(f64::INFINITY),
                Parsed::Float(f) => f,
                Parsed::Imag(_) => return Err(self.err_at(arg_pos, "float() cannot take a complex number")),
            },
        };
        self.expect(')', "to close float(")?;
        Ok(Value::Float(v))
    }

    // ----- containers ------------------------------------------------------

    fn paren(&mut self, depth: usize) -> Result<Value, LiteralError> {
        if depth >= MAX_DEPTH {
            return Err(self.err(format!("tuples nested deeper than {MAX_DEPTH} levels")));
        }
        let open = self.pos;
        self.pos += 1;
        self.ws();
        if self.eat(')') {
            return Ok(Value::Tuple(Vec::new()));
        }
        let first = self.expr(depth + 1)?;
        self.ws();
        if self.eat(')') {
            // `(x)` is just x.
            return Ok(first);
        }
        let mut items = vec![first];
        loop {
            self.ws();
            match self.peek() {
                Some(',') => {
                    self.pos += 1;
                    self.ws();
                    if self.eat(')') {
                        return Ok(Value::Tuple(items));
                    }
                    items.push(self.expr(depth + 1)?);
                }
                Some(')') => {
                    self.pos += 1;
                    return Ok(Value::Tuple(items));
                }
                Some(c) => return Err(self.err(format!("expected ',' or ')' in the tuple, found {c:?}"))),
                None => {
                    return Err(self.err_at(open, "unclosed '(': the tuple has no closing ')'"));
                }
            }
        }
    }

    /// `frozenset()` or `frozenset(<tuple, list or set display>)`.
    fn frozenset(&mut self, depth: usize) -> Result<Value, LiteralError> {
        if depth >= MAX_DEPTH {
            return Err(self.err(format!("values nested deeper than {MAX_DEPTH} levels")));
        }
        self.expect('(', "after frozenset")?;
        self.ws();
        if self.eat(')') {
            return Ok(Value::FrozenSet(Vec::new()));
        }
        let open_pos = self.pos;
        let close = match self.peek() {
            Some('(') => ')',
            Some('[') => ']',
            Some('{') => '}',
            _ => return Err(self.err("frozenset() takes a tuple, list or set of values here, e.g. frozenset({1, 2})")),
        };
        self.pos += 1;
        let mut items: Vec<Value> = Vec::new();
        loop {
            self.ws();
            if self.eat(close) {
                break;
            }
            if self.at_end() {
                return Err(self.err_at(open_pos, format!("unclosed bracket: expected {close:?}")));
            }
            let item = self.expr(depth + 1)?;
            // Members are unique; insertion order stands in for Python's hash order.
            if !items.iter().any(|x| x.set_eq(&item)) {
                items.push(item);
            }
            self.ws();
            if !self.eat(',') {
                self.ws();
                if !self.eat(close) {
                    return Err(match self.peek() {
                        Some(c) => self.err(format!("expected ',' or {close:?}, found {c:?}")),
                        None => self.err_at(open_pos, format!("unclosed bracket: expected {close:?}")),
                    });
                }
                break;
            }
        }
        self.expect(')', "to close frozenset(")?;
        Ok(Value::FrozenSet(items))
    }

    // ----- strings ---------------------------------------------------------

    /// If a string prefix (`b`, `r`, `u`, `rb`, `br`, `f`…) followed by a
    /// quote starts here, its length.
    fn string_prefix_len(&self) -> Option<usize> {
        let mut n = 0;
        while n < 2 && self.peek_at(n).is_some_and(|c| "bBrRuUfF".contains(c)) {
            n += 1;
        }
        if n > 0 && matches!(self.peek_at(n), Some('\'' | '"')) {
            Some(n)
        } else {
            None
        }
    }

    /// One or more adjacent string literals, concatenated as Python does.
    fn strings(&mut self) -> Result<Value, LiteralError> {
        let mut acc = self.string()?;
        loop {
            let save = self.pos;
            self.ws();
            let more = matches!(self.peek(), Some('\'' | '"')) || self.string_prefix_len().is_some();
            if !more {
                self.pos = save;
                return Ok(acc);
            }
            let at = self.pos;
            let next = self.string()?;
            acc = match (acc, next) {
                (Value::Str(a), Value::Str(b)) => Value::Str(a + &b),
                (Value::Bytes(mut a), Value::Bytes(b)) => {
                    a.extend(b);
                    Value::Bytes(a)
                }
                _ => return Err(self.err_at(at, "cannot mix bytes and nonbytes literals")),
            };
        }
    }

    fn string(&mut self) -> Result<Value, LiteralError> {
        let start = self.pos;
        let (mut raw, mut bytes, mut fstring, mut seen) = (false, false, false, String::new());
        while let Some(c) = self.peek() {
            if c == '\'' || c == '"' {
                break;
            }
            let lc = c.to_ascii_lowercase();
            if seen.contains(lc) || (lc == 'u' && !seen.is_empty()) || (seen.contains('u') && lc != 'u') {
                return Err(self.err_at(start, "invalid string prefix"));
            }
            seen.push(lc);
            match lc {
                'r' => raw = true,
                'b' => bytes = true,
                'f' => fstring = true,
                _ => {}
            }
            self.pos += 1;
        }
        if fstring {
            return Err(self.err_at(start, "f-strings are not literals"));
        }
        let quote = self.bump().ok_or_else(|| self.err("expected a quote"))?;
        let triple = self.peek() == Some(quote) && self.peek_at(1) == Some(quote);
        if triple {
            self.pos += 2;
        }
        let what = if bytes { "bytes" } else { "string" };
        let mut out: Vec<char> = Vec::new();
        let mut out_bytes: Vec<u8> = Vec::new();
        loop {
            let Some(c) = self.bump() else {
                return Err(self.err_at(start, format!("unterminated {what} literal")));
            };
            if c == quote {
                if !triple {
                    break;
                }
                if self.peek() == Some(quote) && self.peek_at(1) == Some(quote) {
                    self.pos += 2;
                    break;
                }
            }
            if (c == '\n' || c == '\r') && !triple {
                return Err(self.err_at(start, format!("unterminated {what} literal (a line break inside quotes)")));
            }
            if c == '\\' {
                let esc_pos = self.pos - 1;
                let Some(e) = self.bump() else {
                    return Err(self.err_at(start, format!("unterminated {what} literal")));
                };
                if raw {
                    // In raw literals a backslash escapes nothing but still
                    // keeps the next quote from ending the literal.
                    push_char(&mut out, &mut out_bytes, bytes, '\\', self, esc_pos)?;
                    push_char(&mut out, &mut out_bytes, bytes, e, self, esc_pos)?;
                    continue;
                }
                match e {
                    '\n' => {}
                    '\\' | '\'' | '"' => push_char(&mut out, &mut out_bytes, bytes, e, self, esc_pos)?,
                    'n' => push_char(&mut out, &mut out_bytes, bytes, '\n', self, esc_pos)?,
                    'r' => push_char(&mut out, &mut out_bytes, bytes, '\r', self, esc_pos)?,
                    't' => push_char(&mut out, &mut out_bytes, bytes, '\t', self, esc_pos)?,
                    'a' => push_char(&mut out, &mut out_bytes, bytes, '\x07', self, esc_pos)?,
                    'b' => push_char(&mut out, &mut out_bytes, bytes, '\x08', self, esc_pos)?,
                    'f' => push_char(&mut out, &mut out_bytes, bytes, '\x0c', self, esc_pos)?,
                    'v' => push_char(&mut out, &mut out_bytes, bytes, '\x0b', self, esc_pos)?,
                    '0'..='7' => {
                        let mut v = e.to_digit(8).unwrap_or(0);
                        for _ in 0..2 {
                            match self.peek().and_then(|d| d.to_digit(8)) {
                                Some(d) => {
                                    v = v * 8 + d;
                                    self.pos += 1;
                                }
                                None => break,
                            }
                        }
                        if bytes {
                            let b = u8::try_from(v).map_err(|_| {
                                self.err_at(esc_pos, format!("octal escape \\{v:o} is out of range for bytes"))
                            })?;
                            out_bytes.push(b);
                        } else {
                            let ch = char::from_u32(v).ok_or_else(|| self.err_at(esc_pos, "invalid octal escape"))?;
                            out.push(ch);
                        }
                    }
                    'x' => {
                        let v = self.hex_digits(2, esc_pos, "\\xXX")?;
                        if bytes {
                            out_bytes.push(u8::try_from(v).unwrap_or(0));
                        } else {
                            out.push(char::from_u32(v).unwrap_or('\u{fffd}'));
                        }
                    }
                    'u' | 'U' if !bytes => {
                        let (n, form) = if e == 'u' { (4, "\\uXXXX") } else { (8, "\\UXXXXXXXX") };
                        let v = self.hex_digits(n, esc_pos, form)?;
                        let ch = char::from_u32(v).ok_or_else(|| {
                            self.err_at(esc_pos, format!("\\{e}{v:0n$x} is not a valid Unicode scalar value (surrogates cannot be sent as UTF-8)"))
                        })?;
                        out.push(ch);
                    }
                    'N' if !bytes => {
                        return Err(self.err_at(esc_pos, "\\N{...} escapes are not supported; use \\uXXXX"));
                    }
                    other => {
                        // Python keeps unknown escapes verbatim (with a warning).
                        push_char(&mut out, &mut out_bytes, bytes, '\\', self, esc_pos)?;
                        push_char(&mut out, &mut out_bytes, bytes, other, self, esc_pos)?;
                    }
                }
                continue;
            }
            let at = self.pos - 1;
            push_char(&mut out, &mut out_bytes, bytes, c, self, at)?;
        }
        Ok(if bytes { Value::Bytes(out_bytes) } else { Value::Str(out.into_iter().collect()) })
    }

    fn hex_digits(&mut self, n: usize, esc_pos: usize, form: &str) -> Result<u32, LiteralError> {
        let mut v: u32 = 0;
        for _ in 0..n {
            match self.peek().and_then(|c| c.to_digit(16)) {
                Some(d) => {
                    v = v.wrapping_mul(16).wrapping_add(d);
                    self.pos += 1;
                }
                None => return Err(self.err_at(esc_pos, format!("truncated {form} escape"))),
            }
        }
        Ok(v)
    }
}

fn push_char(
    out: &mut Vec<char>,
    out_bytes: &mut Vec<u8>,
    bytes: bool,
    c: char,
    p: &Parser,
    at: usize,
) -> Result<(), LiteralError> {
    if bytes {
        if !c.is_ascii() {
            return Err(p.err_at(at, "bytes can only contain ASCII literal characters (use \\xXX escapes)"));
        }
        out_bytes.push(c as u8);
    } else {
        out.push(c);
    }
    Ok(())
}

/// Rust's float parser on text already checked to be `digits[.digits][e±digits]`.
fn float_of(text: &str) -> Option<f64> {
    let t = if text.starts_with('.') { format!("0{text}") } else { text.to_string() };
    t.parse::<f64>().ok()
}

/// Python's `float(str)`: surrounding whitespace, a sign, `inf`,
/// `infinity`, `nan` (any case), or a decimal number with underscores
/// between digits.
fn python_float(s: &str) -> Option<f64> {
    let t = s.trim();
    let (neg, body) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let lower = body.to_ascii_lowercase();
    let v = match lower.as_str() {
        "inf" | "infinity" => f64::INFINITY,
        "nan" => f64::NAN,
        _ => {
            if body.is_empty()
                || !body.chars().all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-' | '_'))
                || body.starts_with('_')
                || body.contains("__")
            {
                return None;
            }
            let clean: String = body.chars().filter(|c| *c != '_').collect();
            if !clean.chars().next().is_some_and(|c| c.is_ascii_digit() || c == '.') {
                return None;
            }
            float_of(&clean)?
        }
    };
    Some(if neg { -v } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Value {
        parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn bad(s: &str) -> LiteralError {
        match parse(s) {
            Ok(v) => panic!("{s:?} parsed as {v:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn constants() {
        assert_eq!(ok("None"), Value::None);
        assert_eq!(ok(" True "), Value::Bool(true));
        assert_eq!(ok("False"), Value::Bool(false));
        assert_eq!(ok("..."), Value::Ellipsis);
        assert_eq!(ok("Ellipsis"), Value::Ellipsis);
        assert!(bad("none").message.contains("None"));
        assert!(bad("true").message.contains("True"));
    }

    #[test]
    fn integers() {
        assert_eq!(ok("0"), Value::from(0));
        assert_eq!(ok("42"), Value::from(42));
        assert_eq!(ok("-7"), Value::from(-7));
        assert_eq!(ok("+7"), Value::from(7));
        assert_eq!(ok("- 7"), Value::from(-7));
        assert_eq!(ok("1_000_000"), Value::from(1_000_000));
        assert_eq!(ok("0x1f"), Value::from(31));
        assert_eq!(ok("0X_FF"), Value::from(255));
        assert_eq!(ok("0o17"), Value::from(15));
        assert_eq!(ok("0b101"), Value::from(5));
        assert_eq!(ok("-0x10"), Value::from(-16));
        assert_eq!(ok("000"), Value::from(0));
        let big = "123456789012345678901234567890";
        assert_eq!(ok(big).repr(), big);
        assert_eq!(ok(&format!("-{big}")).repr(), format!("-{big}"));
        assert_eq!(ok("-9223372036854775808"), Value::from(i64::MIN));
        assert_eq!(ok("9223372036854775808").repr(), "9223372036854775808");
        assert!(bad("012").message.contains("leading zeros"));
        assert!(bad("1__0").message.contains("underscore"));
        assert!(bad("1_").message.contains("underscore"));
        assert!(bad("0x").message.contains("hexadecimal"));
        assert!(bad("0b102").message.contains("invalid digit"));
        assert!(bad("12abc").message.contains("after the digits"));
        assert!(bad("--1").message.contains("more than one sign"));
        assert!(bad(&"9".repeat(MAX_INT_DIGITS + 1)).message.contains("exceeds the limit"));
        assert_eq!(ok(&"9".repeat(MAX_INT_DIGITS)).repr().len(), MAX_INT_DIGITS);
    }

    #[test]
    fn floats() {
        assert_eq!(ok("1.5"), Value::Float(1.5));
        assert_eq!(ok("-2.5"), Value::Float(-2.5));
        assert_eq!(ok(".5"), Value::Float(0.5));
        assert_eq!(ok("5."), Value::Float(5.0));
        assert_eq!(ok("1e3"), Value::Float(1000.0));
        assert_eq!(ok("1E-3"), Value::Float(0.001));
        assert_eq!(ok("1_0.2_5"), Value::Float(10.25));
        assert_eq!(ok("1e400"), Value::Float(f64::INFINITY));
        assert_eq!(ok("inf"), Value::Float(f64::INFINITY));
        assert_eq!(ok("-inf"), Value::Float(f64::NEG_INFINITY));
        assert!(matches!(ok("nan"), Value::Float(f) if f.is_nan()));
        assert_eq!(ok("float('inf')"), Value::Float(f64::INFINITY));
        assert_eq!(ok("float(\"-Infinity\")"), Value::Float(f64::NEG_INFINITY));
        assert!(matches!(ok("float('nan')"), Value::Float(f) if f.is_nan()));
        assert_eq!(ok("float(' 1.25 ')"), Value::Float(1.25));
        assert_eq!(ok("float(3)"), Value::Float(3.0));
        assert_eq!(ok("-0.0").repr(), "-0.0");
        assert!(bad("float('x')").message.contains("could not convert"));
        assert!(bad("1.5.2").message.contains("unexpected"));
        // Every repr of a float parses back to the same float.
        for f in [0.1, 1e16, 1e-5, 5e-324, 1.7976931348623157e308, -3.25] {
            assert_eq!(ok(&Value::Float(f).repr()), Value::Float(f));
        }
    }

    #[test]
    fn complex_numbers() {
        assert_eq!(ok("2j"), Value::Complex(0.0, 2.0));
        assert_eq!(ok("1+2j"), Value::Complex(1.0, 2.0));
        assert_eq!(ok("1 - 2.5j"), Value::Complex(1.0, -2.5));
        assert_eq!(ok("(1.5-2j)"), Value::Complex(1.5, -2.0));
        assert_eq!(ok("-1-2j"), Value::Complex(-1.0, -2.0));
        assert_eq!(ok("infj"), Value::Complex(0.0, f64::INFINITY));
        assert!(matches!(ok("(inf+nanj)"), Value::Complex(r, i) if r.is_infinite() && i.is_nan()));
        let neg = ok("-2j");
        assert!(matches!(neg, Value::Complex(r, i) if r == 0.0 && r.is_sign_negative() && i == -2.0));
        for (r, i) in [(1.5, -2.25), (0.0, 1.0), (-1.0, 0.5)] {
            assert_eq!(ok(&Value::Complex(r, i).repr()), Value::Complex(r, i));
        }
        assert!(bad("1+2").message.contains("complex"));
        assert!(bad("1j+2j").message.contains("real"));
    }

    #[test]
    fn strings() {
        assert_eq!(ok("'abc'"), Value::from("abc"));
        assert_eq!(ok("\"it's\""), Value::from("it's"));
        assert_eq!(ok(r"'a\tb\n\\\''"), Value::from("a\tb\n\\'"));
        assert_eq!(ok(r"'\x41\101\u00e9\U0001F600'"), Value::from("AAé😀"));
        assert_eq!(ok(r"'\q'"), Value::from("\\q"));
        assert_eq!(ok(r"r'\d+\''"), Value::from("\\d+\\'"));
        assert_eq!(ok("u'x'"), Value::from("x"));
        assert_eq!(ok("'a' \"b\""), Value::from("ab"));
        assert_eq!(ok("'''multi\nline'''"), Value::from("multi\nline"));
        assert_eq!(ok("'é'"), Value::from("é"));
        assert_eq!(ok("''"), Value::from(""));
        assert!(bad("'abc").message.contains("unterminated"));
        assert_eq!(bad("(1, 'abc").column, 5);
        assert!(bad("'a\nb'").message.contains("line break"));
        assert!(bad(r"'\x4'").message.contains("truncated"));
        assert!(bad(r"'\ud800'").message.contains("surrogate"));
        assert!(bad(r"'\N{DASH}'").message.contains("\\N"));
        assert!(bad("f'x'").message.contains("f-strings"));
        assert!(bad("'a' b'b'").message.contains("mix"));
        // Every repr of a string parses back.
        for s in ["plain", "quote'", "both'\"", "ctl\x01\x7f\u{85}", "tab\t", "back\\slash", "ünï"] {
            assert_eq!(ok(&Value::from(s).repr()), Value::from(s), "{s:?}");
        }
    }

    #[test]
    fn bytes() {
        assert_eq!(ok("b'abc'"), Value::Bytes(b"abc".to_vec()));
        assert_eq!(ok(r"b'\x00\xff\n'"), Value::Bytes(vec![0, 255, 10]));
        assert_eq!(ok(r"B'\u0041'"), Value::Bytes(b"\\u0041".to_vec()));
        assert_eq!(ok(r"rb'\x00'"), Value::Bytes(b"\\x00".to_vec()));
        assert_eq!(ok(r"Br'\x00'"), Value::Bytes(b"\\x00".to_vec()));
        assert_eq!(ok("b''"), Value::Bytes(Vec::new()));
        assert_eq!(ok("b'a' b'b'"), Value::Bytes(b"ab".to_vec()));
        assert!(bad("b'é'").message.contains("ASCII"));
        assert!(bad(r"b'\777'").message.contains("out of range"));
        assert!(bad("ub'x'").message.contains("prefix"));
        for b in [vec![0u8, 1, 2, 255], b"it's".to_vec(), b"q\"'".to_vec(), b"\\".to_vec()] {
            assert_eq!(ok(&Value::Bytes(b.clone()).repr()), Value::Bytes(b));
        }
    }

    #[test]
    fn tuples() {
        assert_eq!(ok("()"), Value::Tuple(vec![]));
        assert_eq!(ok("( )"), Value::Tuple(vec![]));
        assert_eq!(ok("(1,)"), Value::Tuple(vec![1.into()]));
        assert_eq!(ok("(1)"), Value::from(1));
        assert_eq!(ok("(1, 'a', None)"), Value::Tuple(vec![1.into(), "a".into(), Value::None]));
        assert_eq!(ok("(1, 2,)"), Value::Tuple(vec![1.into(), 2.into()]));
        assert_eq!(ok("((), ((1,),))").repr(), "((), ((1,),))");
        assert_eq!(ok("1, 2"), Value::Tuple(vec![1.into(), 2.into()]));
        assert_eq!(ok("1,"), Value::Tuple(vec![1.into()]));
        assert!(bad("(1 2)").message.contains("expected ','"));
        let e = bad("(1, 2");
        assert!(e.message.contains("unclosed"), "{e}");
        assert_eq!(e.column, 1);
        assert!(bad("(,)").message.contains("unexpected"));
        let deep = format!("{}1{}", "(".repeat(200), ")".repeat(200));
        assert!(bad(&deep).message.contains("nested deeper"));
        let ok_depth = format!("{}{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        assert!(parse(&ok_depth).is_ok());
        let v =
            Value::Tuple(vec![Value::None, Value::Bool(true), Value::from(-3), Value::from("x"), Value::Tuple(vec![])]);
        assert_eq!(ok(&v.repr()), v);
    }

    #[test]
    fn frozensets() {
        assert_eq!(ok("frozenset()"), Value::FrozenSet(vec![]));
        assert_eq!(ok("frozenset({1, 2, 1})"), Value::FrozenSet(vec![1.into(), 2.into()]));
        assert_eq!(ok("frozenset((1,))"), Value::FrozenSet(vec![1.into()]));
        assert_eq!(ok("frozenset(['a', 'b',])"), Value::FrozenSet(vec!["a".into(), "b".into()]));
        assert_eq!(ok("frozenset({})"), Value::FrozenSet(vec![]));
        assert!(bad("frozenset(1)").message.contains("takes a tuple"));
        assert!(bad("frozenset({1, 2)").message.contains("expected ','"));
        let v = Value::FrozenSet(vec![1.into(), "a".into()]);
        assert_eq!(ok(&v.repr()), v);
    }

    #[test]
    fn refusals_explain_themselves() {
        assert!(bad("[1, 2]").message.contains("tuple"));
        assert!(bad("{1: 2}").message.contains("frozenset"));
        let e = bad("hello");
        assert!(e.message.contains("'hello'"), "{e}");
        assert_eq!(e.column, 1);
        assert!(bad("").message.contains("empty"));
        assert!(bad("   ").message.contains("empty"));
        assert!(bad("1 2").message.contains("after the literal"));
        assert!(bad("@").message.contains("unexpected"));
        assert_eq!(bad("(1, x)").column, 5);
        assert_eq!(bad("(1, x)").caret("(1, x)"), "(1, x)\n    ^");
        assert_eq!(bad("(1, x)").to_string().rsplit("at column ").next(), Some("5"));
    }

    #[test]
    fn never_panics_on_prefixes_of_valid_input() {
        let samples = ["(1, 'a\\x41', b'\\xff', -2.5e-3, 1+2j, frozenset({1}), float('inf'), 0x_f, r'\\'')"];
        for s in samples {
            let chars: Vec<char> = s.chars().collect();
            for n in 0..=chars.len() {
                let prefix: String = chars[..n].iter().collect();
                let _ = parse(&prefix);
            }
            assert!(parse(s).is_ok());
        }
    }

    mod properties {
        use super::super::parse;
        use crate::wire::Value;
        use proptest::prelude::*;

        /// Everything `repr()` prints that the parser promises to read back
        /// (slices are not literals; NaN never equals itself; frozensets
        /// would dedupe).
        fn value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::None),
                Just(Value::Ellipsis),
                Just(Value::NotImplemented),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                any::<i128>().prop_map(Value::from),
                any::<f64>().prop_filter("no NaN", |f| !f.is_nan()).prop_map(Value::Float),
                (any::<f64>(), any::<f64>())
                    .prop_filter("no NaN", |(a, b)| !a.is_nan() && !b.is_nan())
                    .prop_map(|(a, b)| Value::Complex(a, b)),
                ".{0,20}".prop_map(Value::Str),
                proptest::collection::vec(any::<u8>(), 0..40).prop_map(Value::Bytes),
            ];
            leaf.prop_recursive(4, 48, 6, |inner| proptest::collection::vec(inner, 0..6).prop_map(Value::Tuple))
        }

        proptest! {
            #[test]
            fn repr_parses_back(v in value()) {
                let text = v.repr();
                prop_assert_eq!(parse(&text).ok(), Some(v), "{}", text);
            }

            #[test]
            fn arbitrary_text_never_panics(s in "\\PC{0,40}") {
                let _ = parse(&s);
            }

            #[test]
            fn literal_shaped_text_never_panics(s in "[-+ ()\\[\\]{},.'\"\\\\0-9a-fjxobeEnNrRuU_]{0,30}") {
                let _ = parse(&s);
            }
        }
    }
}
