//! Channel names and channel patterns.

/// Longest channel name.
pub const MAX_NAME: usize = 128;

/// Whether `name` is a valid channel name: `[A-Za-z0-9_.:@-]{1,128}`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'-'))
}

/// A channel pattern: a name in which `*` stands for any run of characters
/// (`chat.*`, `*.public`, `*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    /// A pattern from its text (any text; `*` is the only special character).
    pub fn new(p: &str) -> Pattern {
        Pattern(p.to_string())
    }

    /// The pattern's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `name` matches (linear-time wildcard matching).
    pub fn matches(&self, name: &str) -> bool {
        glob(self.0.as_bytes(), name.as_bytes())
    }
}

/// Whether any of `patterns` matches `name`.
pub fn any_matches(patterns: &[Pattern], name: &str) -> bool {
    patterns.iter().any(|p| p.matches(name))
}

/// Wildcard match where `*` matches any sequence, with the classic
/// single-backtrack-point algorithm (no exponential blow-up).
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("chat.room-1:a@b_c"));
        assert!(valid_name(&"a".repeat(128)));
        assert!(!valid_name(&"a".repeat(129)));
        assert!(!valid_name(""));
        assert!(!valid_name("has space"));
        assert!(!valid_name("slash/no"));
        assert!(!valid_name("é"));
        assert!(!valid_name("#user"));
    }

    #[test]
    fn patterns() {
        let p = Pattern::new("chat.*");
        assert!(p.matches("chat.room1"));
        assert!(p.matches("chat."));
        assert!(!p.matches("chat"));
        assert!(!p.matches("news.chat.x"));
        assert!(Pattern::new("*").matches("anything"));
        assert!(Pattern::new("*.public").matches("a.b.public"));
        assert!(!Pattern::new("*.public").matches("a.private"));
        assert!(Pattern::new("exact").matches("exact"));
        assert!(!Pattern::new("exact").matches("exact2"));
        assert!(Pattern::new("a*b*c").matches("aXXbYYc"));
        assert!(!Pattern::new("a*b*c").matches("aXXbYY"));
        // Pathological input stays fast (linear per backtrack point).
        assert!(!Pattern::new(&"*a".repeat(50)).matches(&"a".repeat(49)));
    }
}
