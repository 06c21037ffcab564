//! Dialplans: which dialed target goes to which queue (`dialplans/*.toml`).

use super::{parse_file, ConfigError, QueueConfig};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// What the caller dialed, normalized from the Request-URI: the user part of
/// a `sip:` URI or the number of a `tel:` URI (visual separators removed),
/// or a service URN (RFC 5031), lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialedTarget {
    Number(String),
    Urn(String),
}

impl DialedTarget {
    /// Removes the visual separators RFC 3966 allows in numbers.
    pub fn number(raw: &str) -> DialedTarget {
        DialedTarget::Number(
            raw.chars()
                .filter(|c| !matches!(c, '-' | '.' | '(' | ')' | ' '))
                .collect(),
        )
    }

    pub fn urn(raw: &str) -> DialedTarget {
        DialedTarget::Urn(raw.to_ascii_lowercase())
    }

    /// The text stored on the call record.
    pub fn as_text(&self) -> String {
        match self {
            DialedTarget::Number(n) => n.clone(),
            DialedTarget::Urn(u) => u.clone(),
        }
    }
}

/// One pattern of a route's `match` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialplanMatch {
    /// `112` or `tel:112`: the number, dialed as a SIP user or a tel: URI.
    Number(String),
    /// `urn:service:sos`: exactly this service.
    Urn(String),
    /// `urn:service:sos.*`: any sub-service (RFC 5031 §4.2), not the parent.
    UrnChildren(String),
}

impl DialplanMatch {
    fn parse(s: &str) -> Result<Self, String> {
        let lower = s.trim().to_ascii_lowercase();
        if let Some(num) = lower.strip_prefix("tel:") {
            return Self::parse_number(num, s);
        }
        if lower.starts_with("urn:service:") {
            if let Some(parent) = lower.strip_suffix(".*") {
                return Ok(DialplanMatch::UrnChildren(format!("{parent}.")));
            }
            if lower.contains('*') {
                return Err(format!(
                    "only a trailing `.*` wildcard is allowed, found `{s}`"
                ));
            }
            return Ok(DialplanMatch::Urn(lower));
        }
        Self::parse_number(&lower, s)
    }

    fn parse_number(num: &str, orig: &str) -> Result<Self, String> {
        let DialedTarget::Number(n) = DialedTarget::number(num) else {
            unreachable!()
        };
        let valid = !n.is_empty()
            && n.char_indices()
                .all(|(i, c)| c.is_ascii_digit() || c == '*' || c == '#' || (i == 0 && c == '+'));
        if valid {
            Ok(DialplanMatch::Number(n))
        } else {
            Err(format!(
                "expected a number, `tel:NUMBER`, `urn:service:NAME` or `urn:service:NAME.*`, found `{orig}`"
            ))
        }
    }

    pub fn matches(&self, t: &DialedTarget) -> bool {
        match (self, t) {
            (DialplanMatch::Number(p), DialedTarget::Number(n)) => p == n,
            (DialplanMatch::Urn(p), DialedTarget::Urn(u)) => p == u,
            (DialplanMatch::UrnChildren(prefix), DialedTarget::Urn(u)) => {
                u.len() > prefix.len() && u.starts_with(prefix.as_str())
            }
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct DialplanFile {
    #[serde(rename = "route")]
    routes: Vec<RouteFile>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteFile {
    name: String,
    #[serde(rename = "match")]
    patterns: Vec<String>,
    /// `112` or `119`: the service the incident is opened under.
    service: String,
    queue: String,
    /// Emergency routes are accepted without authentication from trunks.
    #[serde(default)]
    emergency: bool,
    /// Ring (180) this long before answering. 0 answers at once.
    #[serde(default, with = "humantime_serde")]
    answer_delay: Option<Duration>,
    /// Skills this route adds to the queue's (a language line: `{ jv = 1 }`).
    #[serde(default)]
    require: std::collections::BTreeMap<String, u8>,
}

/// A checked route.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub name: String,
    pub patterns: Vec<DialplanMatch>,
    pub service: String,
    pub queue: String,
    pub emergency: bool,
    pub answer_delay: Duration,
    pub require: BTreeMap<String, u8>,
}

#[derive(Debug, Clone, Default)]
pub struct Dialplan {
    pub routes: Vec<Route>,
}

impl Dialplan {
    /// Loads every `*.toml` in `dir`, in file-name order; the first route
    /// that matches a target wins.
    pub fn load_dir(
        dir: &Path,
        queues: &BTreeMap<String, QueueConfig>,
    ) -> Result<Dialplan, ConfigError> {
        let read_err = |source| ConfigError::Read {
            file: dir.to_path_buf(),
            source,
        };
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .map_err(read_err)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();
        let mut plan = Dialplan::default();
        for file in &files {
            let parsed: DialplanFile = parse_file(file)?;
            for (i, r) in parsed.routes.into_iter().enumerate() {
                plan.routes.push(check_route(file, i, r, queues)?);
            }
        }
        if plan.routes.is_empty() {
            return Err(ConfigError::invalid(
                dir,
                "route",
                "expected at least one route in dialplans/*.toml",
            ));
        }
        Ok(plan)
    }

    pub fn lookup(&self, target: &DialedTarget) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| r.patterns.iter().any(|p| p.matches(target)))
    }
}

fn check_route(
    file: &Path,
    i: usize,
    r: RouteFile,
    queues: &BTreeMap<String, QueueConfig>,
) -> Result<Route, ConfigError> {
    let key = |k: &str| format!("route[{i}].{k}");
    if r.patterns.is_empty() {
        return Err(ConfigError::invalid(
            file,
            key("match"),
            "expected at least one pattern",
        ));
    }
    let mut patterns = Vec::new();
    for (j, p) in r.patterns.iter().enumerate() {
        patterns.push(
            DialplanMatch::parse(p)
                .map_err(|m| ConfigError::invalid(file, format!("route[{i}].match[{j}]"), m))?,
        );
    }
    if !queues.contains_key(&r.queue) {
        return Err(ConfigError::invalid(
            file,
            key("queue"),
            format!(
                "expected a queue defined in sip-config/queues.toml, found `{}`",
                r.queue
            ),
        ));
    }
    if !matches!(
        r.service.as_str(),
        "112" | "119" | "110" | "113" | "115" | "118"
    ) {
        return Err(ConfigError::invalid(
            file,
            key("service"),
            format!(
                "expected one of 112, 119, 110, 113, 115, 118, found `{}`",
                r.service
            ),
        ));
    }
    Ok(Route {
        name: r.name,
        patterns,
        service: r.service,
        queue: r.queue,
        emergency: r.emergency,
        answer_delay: r.answer_delay.unwrap_or_default(),
        require: r.require,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_patterns() {
        let p = DialplanMatch::parse("112").unwrap();
        assert!(p.matches(&DialedTarget::number("112")));
        assert!(!p.matches(&DialedTarget::number("1120")));
        assert_eq!(DialplanMatch::parse("tel:1-1-2").unwrap(), p);
        assert!(p.matches(&DialedTarget::number("1-1-2")));
        assert!(!p.matches(&DialedTarget::urn("urn:service:sos")));
    }

    #[test]
    fn urn_patterns_rfc5031() {
        let sos = DialplanMatch::parse("urn:service:sos").unwrap();
        let children = DialplanMatch::parse("URN:service:sos.*").unwrap();
        assert!(sos.matches(&DialedTarget::urn("urn:service:SOS")));
        assert!(!sos.matches(&DialedTarget::urn("urn:service:sos.fire")));
        assert!(children.matches(&DialedTarget::urn("urn:service:sos.fire")));
        assert!(children.matches(&DialedTarget::urn("urn:service:sos.ambulance")));
        assert!(!children.matches(&DialedTarget::urn("urn:service:sos")));
        assert!(!children.matches(&DialedTarget::urn("urn:service:sosx")));
        assert!(!children.matches(&DialedTarget::number("112")));
    }

    #[test]
    fn bad_patterns() {
        assert!(DialplanMatch::parse("urn:service:s*s").is_err());
        assert!(DialplanMatch::parse("abc").is_err());
        assert!(DialplanMatch::parse("tel:").is_err());
        assert!(DialplanMatch::parse("1+1").is_err());
    }
}
