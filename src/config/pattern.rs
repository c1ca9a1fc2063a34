//! `${var}` patterns with the Go program's semantics (`os.Expand`), plus
//! integer arithmetic `$(( … ))` in port patterns.
//!
//! Arithmetic uses the shell's `$((expr))` form. Under Go's `os.Expand` a
//! `$` followed by `(` stays literal, so any pattern containing `$((` could
//! never parse as a port before; giving it a meaning changes no pattern that
//! worked. Inside, `${var}` and `$var` expand first, then `+ - * / %` and
//! parentheses are evaluated on 64-bit integers.

/// Expands `${name}` and `$name` in `s` exactly as Go's `os.Expand` does,
/// looking names up with `lookup` (an unknown name expands to "").
pub fn expand<'a>(s: &str, lookup: impl Fn(&str) -> Option<&'a str>) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0; // start of pending literal
    let mut j = 0;
    while j < b.len() {
        if b[j] == b'$' && j + 1 < b.len() {
            out.push_str(&s[i..j]);
            let (name, w) = shell_name(&s[j + 1..]);
            if name.is_empty() && w > 0 {
                // Bad syntax (`${}` or an unclosed `${`): eat it.
            } else if name.is_empty() {
                out.push('$');
            } else {
                out.push_str(lookup(name).unwrap_or(""));
            }
            j += w;
            i = j + 1;
        }
        j += 1;
    }
    out.push_str(&s[i.min(s.len())..]);
    out
}

fn is_special(c: u8) -> bool {
    matches!(
        c,
        b'*' | b'#' | b'$' | b'@' | b'!' | b'?' | b'-' | b'0'..=b'9'
    )
}

/// Go's `getShellName`: the name after a `$` and how many bytes it spans.
fn shell_name(s: &str) -> (&str, usize) {
    let b = s.as_bytes();
    if b[0] == b'{' {
        if b.len() > 2 && is_special(b[1]) && b[2] == b'}' {
            return (&s[1..2], 3);
        }
        for i in 1..b.len() {
            if b[i] == b'}' {
                if i == 1 {
                    return ("", 2);
                }
                return (&s[1..i], i + 1);
            }
        }
        return ("", 1);
    }
    if is_special(b[0]) {
        return (&s[0..1], 1);
    }
    let n = b
        .iter()
        .take_while(|c| c.is_ascii_alphanumeric() || **c == b'_')
        .count();
    (&s[..n], n)
}

/// Why a port pattern did not give a port.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// The pattern is empty.
    #[error("no port and no port pattern is set")]
    Empty,
    /// The expansion is not an integer.
    #[error("port pattern {pattern:?} expands to {expanded:?}, which is not a number")]
    NotNumber {
        /// The pattern.
        pattern: String,
        /// What it expanded to.
        expanded: String,
    },
    /// Arithmetic syntax or evaluation failed.
    #[error("port pattern {pattern:?}: {message}")]
    Arithmetic {
        /// The pattern.
        pattern: String,
        /// What is wrong.
        message: String,
    },
}

/// Expands a port pattern to an integer (range checks are the caller's).
pub fn port_from_pattern<'a>(
    pattern: &str,
    lookup: impl Fn(&str) -> Option<&'a str> + Copy,
) -> Result<i64, PatternError> {
    if pattern.is_empty() {
        return Err(PatternError::Empty);
    }
    let arith_err = |message: String| PatternError::Arithmetic {
        pattern: pattern.to_owned(),
        message,
    };
    // Evaluate each $(( … )) region, then expand the rest as Go would.
    let mut text = String::new();
    let mut rest = pattern;
    while let Some(start) = rest.find("$((") {
        text.push_str(&rest[..start]);
        let body_start = start + 3;
        let end =
            matching_close(&rest[body_start..]).ok_or_else(|| arith_err("unclosed $((".into()))?;
        let body = expand(&rest[body_start..body_start + end], lookup);
        let v = Arith::new(&body).eval().map_err(arith_err)?;
        text.push_str(&v.to_string());
        rest = &rest[body_start + end + 2..];
    }
    text.push_str(rest);
    let expanded = expand(&text, lookup);
    parse_go_atoi(&expanded).ok_or(PatternError::NotNumber {
        pattern: pattern.to_owned(),
        expanded,
    })
}

/// Offset of the `))` closing an arithmetic body (parentheses balanced).
fn matching_close(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'(' => depth += 1,
            b')' if depth == 0 => return (b.get(i + 1) == Some(&b')')).then_some(i),
            b')' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    None
}

/// Go's `strconv.Atoi`: optional sign, decimal digits, nothing else.
fn parse_go_atoi(s: &str) -> Option<i64> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A tiny recursive-descent evaluator for `+ - * / %` and parentheses.
struct Arith<'a> {
    s: &'a [u8],
    pos: usize,
    depth: usize,
}

impl<'a> Arith<'a> {
    fn new(s: &'a str) -> Self {
        Arith {
            s: s.as_bytes(),
            pos: 0,
            depth: 0,
        }
    }

    fn eval(mut self) -> Result<i64, String> {
        let v = self.expr()?;
        self.skip_ws();
        if self.pos != self.s.len() {
            return Err(format!(
                "unexpected {:?} in arithmetic",
                self.s[self.pos] as char
            ));
        }
        Ok(v)
    }

    fn skip_ws(&mut self) {
        while self
            .s
            .get(self.pos)
            .is_some_and(|c| c.is_ascii_whitespace())
        {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.s.get(self.pos).copied()
    }

    fn expr(&mut self) -> Result<i64, String> {
        let mut v = self.term()?;
        while let Some(op @ (b'+' | b'-')) = self.peek() {
            self.pos += 1;
            let r = self.term()?;
            v = if op == b'+' {
                v.checked_add(r)
            } else {
                v.checked_sub(r)
            }
            .ok_or("arithmetic overflow")?;
        }
        Ok(v)
    }

    fn term(&mut self) -> Result<i64, String> {
        let mut v = self.factor()?;
        while let Some(op @ (b'*' | b'/' | b'%')) = self.peek() {
            self.pos += 1;
            let r = self.factor()?;
            v = match op {
                b'*' => v.checked_mul(r).ok_or("arithmetic overflow")?,
                _ if r == 0 => return Err("division by zero".into()),
                b'/' => v.checked_div(r).ok_or("arithmetic overflow")?,
                _ => v.checked_rem(r).ok_or("arithmetic overflow")?,
            };
        }
        Ok(v)
    }

    fn factor(&mut self) -> Result<i64, String> {
        match self.peek() {
            Some(b'(') => {
                self.depth += 1;
                if self.depth > 32 {
                    return Err("arithmetic nested too deeply".into());
                }
                self.pos += 1;
                let v = self.expr()?;
                if self.peek() != Some(b')') {
                    return Err("missing ')' in arithmetic".into());
                }
                self.pos += 1;
                self.depth -= 1;
                Ok(v)
            }
            Some(b'-') => {
                self.pos += 1;
                self.factor()?
                    .checked_neg()
                    .ok_or_else(|| "arithmetic overflow".into())
            }
            Some(b'+') => {
                self.pos += 1;
                self.factor()
            }
            Some(c) if c.is_ascii_digit() => {
                let start = self.pos;
                while self.s.get(self.pos).is_some_and(u8::is_ascii_digit) {
                    self.pos += 1;
                }
                std::str::from_utf8(&self.s[start..self.pos])
                    .expect("ascii digits")
                    .parse()
                    .map_err(|_| "number too large in arithmetic".into())
            }
            Some(c) => Err(format!("unexpected {:?} in arithmetic", c as char)),
            None => Err("arithmetic ends early".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(k: &str) -> Option<&'static str> {
        match k {
            "machine-name" => Some("vm"),
            "employee-id" => Some("9000"),
            "n" => Some("7"),
            "machine" => Some("M"),
            _ => None,
        }
    }

    #[test]
    fn go_expand_semantics() {
        let cases = [
            ("${machine-name}/x", "vm/x"),
            ("$machine-name", "M-name"),
            ("a${}b", "ab"),
            ("a${unclosed", "aunclosed"),
            ("cost $", "cost $"),
            ("a$%b", "a$%b"),
            ("$1x", "x"),
            ("${1}x", "x"),
            ("${undefined}z", "z"),
            ("$$", ""),
            ("$n$n", "77"),
            ("plain", "plain"),
            ("5${employee-id}", "59000"),
        ];
        for (input, want) in cases {
            assert_eq!(expand(input, vars), want, "input {input:?}");
        }
    }

    #[test]
    fn port_patterns() {
        assert_eq!(port_from_pattern("5${employee-id}", vars), Ok(59000));
        assert_eq!(
            port_from_pattern("$((5900 + ${employee-id}))", vars),
            Ok(14900)
        );
        assert_eq!(port_from_pattern("$((5900+$n*(2+1)))", vars), Ok(5921));
        assert_eq!(port_from_pattern("1$((2*3))", vars), Ok(16));
        assert_eq!(port_from_pattern("+42", vars), Ok(42));
        assert!(matches!(
            port_from_pattern("5${nope}x", vars),
            Err(PatternError::NotNumber { .. })
        ));
        assert_eq!(port_from_pattern("", vars), Err(PatternError::Empty));
        for bad in ["$((1/0))", "$((1+))", "$((2", "$((a))", "$((1)) )"] {
            assert!(port_from_pattern(bad, vars).is_err(), "{bad}");
        }
        assert!(
            port_from_pattern(&format!("$(({}1{}))", "(".repeat(40), ")".repeat(40)), vars)
                .is_err()
        );
    }
}
