//! Grants: what an identity may do, checked by the relay on every registration and every
//! stream. Patterns are `*`, `prefix*` or an exact name.

use std::fmt;

use crate::error::ConfigError;
use crate::protocol::is_valid_name;

/// A name pattern in grants: `*` (anything), `prefix*` or an exact name.
#[derive(Clone, PartialEq, Eq)]
pub struct Pattern(pub(super) String);

impl Pattern {
    /// Parses a pattern; the part before an optional final `*` must be a valid name.
    pub fn new(s: &str) -> Result<Self, ConfigError> {
        let stem = s.strip_suffix('*').unwrap_or(s);
        if (stem.is_empty() && s == "*") || is_valid_name(stem) {
            Ok(Self(s.to_owned()))
        } else {
            Err(ConfigError::Invalid(format!("bad name pattern {s:?}")))
        }
    }
    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => self.0 == name,
        }
    }
    /// Whether the pattern names exactly one name (no `*`).
    pub fn exact(&self) -> Option<&str> {
        (!self.0.ends_with('*')).then_some(self.0.as_str())
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an identity may do. Empty grants allow nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    register: Vec<Pattern>,
    access: Vec<(Pattern, Pattern)>,
    public: bool,
}

impl Grants {
    /// Grants that allow nothing; add to them with the builder methods.
    pub fn new() -> Self {
        Self::default()
    }
    /// Allows registering as a device whose ID matches `device`.
    pub fn register(mut self, device: Pattern) -> Self {
        self.register.push(device);
        self
    }
    /// Allows opening streams to `service` on `device`.
    pub fn access(mut self, device: Pattern, service: Pattern) -> Self {
        self.access.push((device, service));
        self
    }
    /// Allows a registered device to ask for public ports (the relay must also allow them).
    pub fn public(mut self, allowed: bool) -> Self {
        self.public = allowed;
        self
    }
    /// Grants from the lists a token file (or any credential store) keeps: device ID
    /// patterns it may register as, `device/service` patterns it may open, and whether it
    /// may publish ports. Every pattern is validated.
    pub fn from_lists<S: AsRef<str>>(
        devices: &[S],
        access: &[S],
        public: bool,
    ) -> Result<Self, ConfigError> {
        let mut grants = Self::new().public(public);
        for d in devices {
            grants = grants.register(Pattern::new(d.as_ref())?);
        }
        for a in access {
            grants = grants.access_str(a.as_ref())?;
        }
        Ok(grants)
    }
    /// Parses an access grant written `device/service` (`pi-42/ssh`, `lab-*/*`).
    pub fn access_str(self, grant: &str) -> Result<Self, ConfigError> {
        let (d, s) = grant.split_once('/').ok_or_else(|| {
            ConfigError::Invalid(format!("access grant {grant:?} is not device/service"))
        })?;
        Ok(self.access(Pattern::new(d)?, Pattern::new(s)?))
    }
    /// Whether the identity may register as `device`.
    pub fn may_register(&self, device: &str) -> bool {
        self.register.iter().any(|p| p.matches(device))
    }
    /// Whether the identity may open `service` on `device`.
    pub fn may_access(&self, device: &str, service: &str) -> bool {
        self.access
            .iter()
            .any(|(d, s)| d.matches(device) && s.matches(service))
    }
    /// Whether the identity may reach at least one service of `device`.
    pub fn may_access_device(&self, device: &str) -> bool {
        self.access.iter().any(|(d, _)| d.matches(device))
    }
    /// Whether a device with these grants may ask for public ports.
    pub fn may_publish(&self) -> bool {
        self.public
    }
    /// Device IDs named exactly in access grants (listed even before they first connect).
    pub fn named_devices(&self) -> impl Iterator<Item = &str> {
        self.access.iter().filter_map(|(d, _)| d.exact())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_exact_prefix_and_any() {
        let p = |s| Pattern::new(s).unwrap();
        assert!(p("pi-42").matches("pi-42") && !p("pi-42").matches("pi-420"));
        assert!(p("pi-*").matches("pi-42") && !p("pi-*").matches("pc-1"));
        assert!(p("*").matches("anything"));
        for bad in ["", "a/b", "**", "a*b", "pi 1*"] {
            assert!(Pattern::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn grants_allow_only_what_they_name() {
        let g = Grants::new()
            .register(Pattern::new("pi-42").unwrap())
            .access_str("pi-42/ssh")
            .unwrap()
            .access_str("lab-*/*")
            .unwrap();
        assert!(g.may_register("pi-42") && !g.may_register("pi-43"));
        assert!(g.may_access("pi-42", "ssh") && !g.may_access("pi-42", "web"));
        assert!(g.may_access("lab-1", "web") && !g.may_access("pi-43", "ssh"));
        assert!(!g.may_publish());
        assert_eq!(g.named_devices().collect::<Vec<_>>(), ["pi-42"]);
        assert!(Grants::new().access_str("no-slash").is_err());
    }
}
