//! mosquitto ACL files.
//!
//! ```text
//! # comments
//! topic read public/#          <- before any `user`: anonymous clients
//! user alice
//! topic readwrite alice/#      <- alice only
//! topic deny alice/secret/#
//! pattern write devices/%c/up  <- everyone; %c client id, %u username
//! ```
//!
//! As in mosquitto, explicit denials win over grants, and anything not
//! granted is denied. A subscription is allowed when a read grant covers
//! every topic it can match and no denial does; a wildcard subscription that
//! merely overlaps a denied area is allowed, and each message is checked on
//! delivery instead.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use super::AuthFileError;
use crate::topic_tree::{filter_matches, validate_filter, TopicLimits};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    ReadWrite,
    Deny,
}

impl Access {
    fn grants(self, wanted: Action) -> bool {
        matches!(
            (self, wanted),
            (Access::ReadWrite, _) | (Access::Read, Action::Read) | (Access::Write, Action::Write)
        )
    }
}

/// What a client wants to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Receive messages (subscribe, delivery, retained at subscribe).
    Read,
    /// Publish (including its will).
    Write,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    access: Access,
    filter: String,
}

/// Who is asking.
#[derive(Debug, Clone, Copy)]
pub struct Principal<'a> {
    pub username: Option<&'a str>,
    pub client_id: &'a str,
}

#[derive(Debug, Default, Clone)]
pub struct AclFile {
    anonymous: Vec<Rule>,
    users: HashMap<String, Vec<Rule>>,
    patterns: Vec<Rule>,
}

const LIMITS: TopicLimits = TopicLimits {
    max_levels: usize::MAX,
    max_length: 65535,
};

impl AclFile {
    pub fn load(path: &Path) -> Result<AclFile, AuthFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses the file's text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<AclFile, AuthFileError> {
        let mut acl = AclFile::default();
        let mut current: Option<String> = None;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |message: String| AuthFileError::Line {
                path: path.to_path_buf(),
                line: i + 1,
                message,
            };
            let (keyword, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let rest = rest.trim_start();
            match keyword {
                "user" => {
                    if rest.is_empty() {
                        return Err(err("`user` needs a username".into()));
                    }
                    acl.users.entry(rest.to_string()).or_default();
                    current = Some(rest.to_string());
                }
                "topic" | "pattern" => {
                    let rule = parse_rule(rest).map_err(err)?;
                    if keyword == "pattern" {
                        acl.patterns.push(rule);
                    } else {
                        match &current {
                            Some(u) => acl.users.entry(u.clone()).or_default().push(rule),
                            None => acl.anonymous.push(rule),
                        }
                    }
                }
                other => return Err(err(format!("unknown keyword `{other}`"))),
            }
        }
        Ok(acl)
    }

    /// Rules that apply to `who`, with `%c`/`%u` filled in. A pattern whose
    /// substitution would carry a wildcard or a level separator (a client
    /// id `+`) applies to nobody, so that an identity cannot widen its own
    /// grant. Only patterns allocate: this runs for every delivered copy.
    fn rules<'a>(&'a self, who: Principal<'a>) -> impl Iterator<Item = (Access, Cow<'a, str>)> {
        let own: &'a [Rule] = match who.username {
            Some(u) => self.users.get(u).map_or(&[], Vec::as_slice),
            None => &self.anonymous,
        };
        let unsafe_level = |s: &str| s.contains(['+', '#', '/']);
        let patterns = self.patterns.iter().filter_map(move |r| {
            let mut filter = Cow::Borrowed(r.filter.as_str());
            if filter.contains("%c") {
                if unsafe_level(who.client_id) {
                    return None;
                }
                filter = Cow::Owned(filter.replace("%c", who.client_id));
            }
            if filter.contains("%u") {
                let u = who.username?;
                if unsafe_level(u) {
                    return None;
                }
                filter = Cow::Owned(filter.replace("%u", u));
            }
            Some((r.access, filter))
        });
        own.iter()
            .map(|r| (r.access, Cow::Borrowed(r.filter.as_str())))
            .chain(patterns)
    }

    /// Denials win; otherwise some grant of `action` must apply. `applies`
    /// says whether a rule's filter concerns the topic or filter asked
    /// about.
    fn decide(&self, who: Principal<'_>, action: Action, applies: impl Fn(&str) -> bool) -> bool {
        let mut granted = false;
        for (access, filter) in self.rules(who) {
            if access == Access::Deny {
                if applies(&filter) {
                    return false;
                }
            } else if !granted && access.grants(action) && applies(&filter) {
                granted = true;
            }
        }
        granted
    }

    /// May `who` do `action` on the topic name `topic`?
    pub fn check_topic(&self, who: Principal<'_>, topic: &str, action: Action) -> bool {
        self.decide(who, action, |f| filter_matches(f, topic))
    }

    /// May `who` subscribe to `filter` (the underlying filter of a shared
    /// subscription)?
    pub fn check_subscribe(&self, who: Principal<'_>, filter: &str) -> bool {
        self.decide(who, Action::Read, |f| filter_covers(f, filter))
    }

    pub fn rule_count(&self) -> usize {
        self.anonymous.len()
            + self.patterns.len()
            + self.users.values().map(Vec::len).sum::<usize>()
    }
}

fn parse_rule(rest: &str) -> Result<Rule, String> {
    let (first, tail) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let (access, filter) = match first {
        "read" => (Access::Read, tail.trim_start()),
        "write" => (Access::Write, tail.trim_start()),
        "readwrite" => (Access::ReadWrite, tail.trim_start()),
        "deny" => (Access::Deny, tail.trim_start()),
        // No access word: the whole rest is the topic, read and write.
        _ => (Access::ReadWrite, rest),
    };
    if filter.is_empty() {
        return Err("missing topic filter".into());
    }
    // %c / %u stand for whole levels; check the shape with a placeholder.
    let shape = filter.replace("%c", "c").replace("%u", "u");
    validate_filter(&shape, LIMITS).map_err(|e| format!("invalid topic filter `{filter}`: {e}"))?;
    Ok(Rule {
        access,
        filter: filter.to_string(),
    })
}

/// Does `outer` match every topic that `inner` can match?
pub fn filter_covers(outer: &str, inner: &str) -> bool {
    if inner.starts_with('$') && (outer.starts_with('+') || outer.starts_with('#')) {
        // A leading wildcard never reaches `$` topics.
        return false;
    }
    let mut o = outer.split('/');
    let mut i = inner.split('/');
    loop {
        match (o.next(), i.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(l)) if l != "#" => {}
            (Some(a), Some(b)) if a == b && a != "+" && a != "#" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who<'a>(u: Option<&'a str>, c: &'a str) -> Principal<'a> {
        Principal {
            username: u,
            client_id: c,
        }
    }

    const FILE: &str = "\
# anonymous section
topic read public/#

user cassiamqtt
topic write cassia/#
topic read cassia/#

user alice
topic readwrite alice/#
topic deny alice/secret/#
topic read #

pattern readwrite devices/%c/#
pattern read users/%u/inbox
";

    fn acl() -> AclFile {
        AclFile::parse(FILE, Path::new("acl")).unwrap()
    }

    #[test]
    fn the_seed_example() {
        let a = acl();
        let c = who(Some("cassiamqtt"), "gw1");
        assert!(a.check_topic(c, "cassia/x/y", Action::Write));
        assert!(a.check_topic(c, "cassia/x/y", Action::Read));
        assert!(!a.check_topic(c, "other/x", Action::Write));
        assert!(a.check_subscribe(c, "cassia/#"));
        assert!(!a.check_subscribe(c, "#"));
        assert!(!a.check_subscribe(c, "+/#"));
    }

    #[test]
    fn anonymous_section_and_patterns() {
        let a = acl();
        let anon = who(None, "dev7");
        assert!(a.check_topic(anon, "public/a", Action::Read));
        assert!(!a.check_topic(anon, "public/a", Action::Write));
        assert!(a.check_topic(anon, "devices/dev7/up", Action::Write));
        assert!(!a.check_topic(anon, "devices/dev8/up", Action::Write));
        // %u needs a username.
        assert!(!a.check_topic(anon, "users/dev7/inbox", Action::Read));
        let bob = who(Some("bob"), "b1");
        assert!(a.check_topic(bob, "users/bob/inbox", Action::Read));
        assert!(!a.check_topic(bob, "public/a", Action::Read));
    }

    #[test]
    fn wildcard_identities_do_not_widen_patterns() {
        let a = acl();
        assert!(!a.check_topic(who(None, "+"), "devices/x/up", Action::Write));
        assert!(!a.check_subscribe(who(None, "#"), "devices/#"));
        // A `/` would reach another device's tree, or a deeper inbox.
        assert!(!a.check_topic(who(None, "x/y"), "devices/x/y/up", Action::Write));
        let slash = who(Some("bob/extra"), "b");
        assert!(!a.check_topic(slash, "users/bob/extra/inbox", Action::Read));
    }

    #[test]
    fn a_denial_after_a_grant_still_wins() {
        let a = AclFile::parse(
            "user u\ntopic readwrite a/#\ntopic deny a/b\npattern deny a/%c\n",
            Path::new("acl"),
        )
        .unwrap();
        let u = who(Some("u"), "me");
        assert!(a.check_topic(u, "a/x", Action::Write));
        assert!(!a.check_topic(u, "a/b", Action::Read));
        assert!(!a.check_topic(u, "a/me", Action::Write));
        assert!(a.check_subscribe(u, "a/#"));
        assert!(!a.check_subscribe(u, "a/me"));
    }

    #[test]
    fn denials_win_and_overlapping_wildcards_filter_per_message() {
        let a = acl();
        let al = who(Some("alice"), "a");
        assert!(a.check_subscribe(al, "#"));
        assert!(a.check_topic(al, "alice/x", Action::Write));
        assert!(!a.check_topic(al, "alice/secret/k", Action::Read));
        assert!(!a.check_topic(al, "alice/secret/k", Action::Write));
        assert!(!a.check_subscribe(al, "alice/secret/#"));
        assert!(a.check_subscribe(al, "alice/+"));
        // `#` does not reach $SYS unless granted explicitly.
        assert!(!a.check_topic(al, "$SYS/broker/uptime", Action::Read));
        assert!(!a.check_subscribe(al, "$SYS/#"));
    }

    #[test]
    fn errors_name_the_line() {
        let e = AclFile::parse("user a\ntopic read a/#/b\n", Path::new("/x/acl")).unwrap_err();
        assert!(
            e.to_string().starts_with("/x/acl:2: invalid topic filter"),
            "{e}"
        );
        let e = AclFile::parse("\nfrobnicate x\n", Path::new("acl")).unwrap_err();
        assert!(e.to_string().contains("acl:2: unknown keyword"), "{e}");
        let e = AclFile::parse("topic read\n", Path::new("acl")).unwrap_err();
        assert!(e.to_string().contains("missing topic filter"), "{e}");
    }

    #[test]
    fn covers() {
        assert!(filter_covers("a/#", "a/b/+"));
        assert!(filter_covers("a/+", "a/b"));
        assert!(!filter_covers("a/+", "a/#"));
        assert!(!filter_covers("a/b", "a/+"));
        assert!(filter_covers("#", "x/#"));
        assert!(!filter_covers("#", "$SYS/#"));
        assert!(filter_covers("$SYS/#", "$SYS/broker/+"));
    }
}
