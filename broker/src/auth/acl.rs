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

use smallvec::SmallVec;

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
    /// The same rules indexed for topic checks (publish, every delivered
    /// copy): built once at load, as the lists above are never changed
    /// after it (a reload builds a new file).
    index: Index,
}

/// [`AclFile`]'s rules in trees of their levels.
#[derive(Debug, Default, Clone)]
struct Index {
    anonymous: RuleTree,
    users: HashMap<String, RuleTree>,
    patterns: RuleTree,
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
        acl.index = Index::build(&acl);
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
        let patterns = self
            .patterns
            .iter()
            .filter_map(move |r| Some((r.access, fill(&r.filter, who)?)));
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

    /// May `who` do `action` on the topic name `topic`? What
    /// [`AclFile::check_topic_linear`] decides, through the index: the cost
    /// follows the topic's levels, not the number of rules.
    pub fn check_topic(&self, who: Principal<'_>, topic: &str, action: Action) -> bool {
        let levels: SmallVec<[&str; 8]> = topic.split('/').collect();
        let dollar = topic.starts_with('$');
        let own = match who.username {
            Some(u) => self.index.users.get(u),
            None => Some(&self.index.anonymous),
        };
        let mut bits = 0;
        if let Some(tree) = own {
            tree.walk(0, &levels, dollar, who, &mut bits);
        }
        // Denials win: no need to look further once one applies.
        if bits & DENY == 0 {
            self.index.patterns.walk(0, &levels, dollar, who, &mut bits);
        }
        bits & DENY == 0
            && bits
                & match action {
                    Action::Read => READ,
                    Action::Write => WRITE,
                }
                != 0
    }

    /// The topic check by trying every rule: the definition the index
    /// must agree with (and the reference the tests compare it to).
    pub fn check_topic_linear(&self, who: Principal<'_>, topic: &str, action: Action) -> bool {
        self.decide(who, action, |f| filter_matches(f, topic))
    }

    /// May `who` subscribe to `filter` (the underlying filter of a shared
    /// subscription)?
    pub fn check_subscribe(&self, who: Principal<'_>, filter: &str) -> bool {
        self.decide(who, Action::Read, |f| filter_covers(f, filter))
    }
}

/// What the rules that concern a topic say, as bits: one rule's access or
/// several rules' together.
const DENY: u8 = 1;
const READ: u8 = 2;
const WRITE: u8 = 4;

fn access_bits(a: Access) -> u8 {
    match a {
        Access::Read => READ,
        Access::Write => WRITE,
        Access::ReadWrite => READ | WRITE,
        Access::Deny => DENY,
    }
}

/// Rule filters in a tree of their levels, so that a topic check walks the
/// topic's levels instead of trying every rule: 1,000 rules under distinct
/// prefixes cost what 10 do. Patterns keep their `%c`/`%u` levels as
/// templates, filled in for the client at each check (the rule set is
/// shared by every client).
#[derive(Debug, Clone)]
struct RuleTree {
    nodes: Vec<Node>,
}

#[derive(Debug, Clone, Default)]
struct Node {
    literal: HashMap<Box<str>, u32>,
    plus: Option<u32>,
    /// Levels with `%c`/`%u` (patterns only).
    templates: Vec<(Box<str>, u32)>,
    /// Rules whose filter ends here.
    end: u8,
    /// Rules whose filter is this node's path followed by `#`.
    hash: u8,
}

impl Default for RuleTree {
    fn default() -> Self {
        RuleTree {
            nodes: vec![Node::default()],
        }
    }
}

impl Index {
    fn build(acl: &AclFile) -> Index {
        let tree = |rules: &[Rule], pattern: bool| {
            let mut t = RuleTree::default();
            for r in rules {
                t.insert(r, pattern);
            }
            t
        };
        Index {
            anonymous: tree(&acl.anonymous, false),
            users: acl
                .users
                .iter()
                .map(|(u, rules)| (u.clone(), tree(rules, false)))
                .collect(),
            patterns: tree(&acl.patterns, true),
        }
    }
}

impl RuleTree {
    /// Adds a (validated) rule; `pattern`: its `%c`/`%u` are templates.
    fn insert(&mut self, rule: &Rule, pattern: bool) {
        let bits = access_bits(rule.access);
        let mut at = 0usize;
        for level in rule.filter.split('/') {
            if level == "#" {
                // `#` is always the last level (the filter was validated).
                self.nodes[at].hash |= bits;
                return;
            }
            let next = self.nodes.len() as u32;
            let node = &mut self.nodes[at];
            let (child, new) = if level == "+" {
                match node.plus {
                    Some(c) => (c, false),
                    None => {
                        node.plus = Some(next);
                        (next, true)
                    }
                }
            } else if pattern && (level.contains("%c") || level.contains("%u")) {
                match node.templates.iter().find(|(t, _)| &**t == level) {
                    Some(&(_, c)) => (c, false),
                    None => {
                        node.templates.push((level.into(), next));
                        (next, true)
                    }
                }
            } else {
                match node.literal.get(level) {
                    Some(&c) => (c, false),
                    None => {
                        node.literal.insert(level.into(), next);
                        (next, true)
                    }
                }
            };
            if new {
                self.nodes.push(Node::default());
            }
            at = child as usize;
        }
        self.nodes[at].end |= bits;
    }

    /// Adds to `bits` those of every rule whose filter matches the topic
    /// of `levels` (as [`filter_matches`] decides, `$` topics included),
    /// from node `at` down. `dollar`: a `$` topic at its first level.
    fn walk(&self, at: u32, levels: &[&str], dollar: bool, who: Principal<'_>, bits: &mut u8) {
        let node = &self.nodes[at as usize];
        // A leading wildcard never reaches `$` topics; `dollar` is only
        // true at the first level.
        if !dollar {
            *bits |= node.hash;
        }
        let Some((level, rest)) = levels.split_first() else {
            *bits |= node.end;
            return;
        };
        if let Some(&c) = node.literal.get(*level) {
            self.walk(c, rest, false, who, bits);
        }
        if let (Some(c), false) = (node.plus, dollar) {
            self.walk(c, rest, false, who, bits);
        }
        for (template, c) in &node.templates {
            // `dollar`: this is the first level and it starts with `$`,
            // which a client id or username filled in must never produce.
            if dollar && !template.starts_with('$') {
                continue;
            }
            if fill_levels(template, who).is_some_and(|t| t == *level) {
                self.walk(*c, rest, false, who, bits);
            }
        }
    }
}

/// A pattern's text with `%c` and `%u` filled in for `who`; `None` if the
/// pattern applies to nobody for this client: a client id or username
/// that would carry a wildcard or a level separator (which would widen
/// the grant), one that would make the first level start with `$` (a
/// client id `$SYS` with `pattern read %c/#` must not read `$SYS/#`), or
/// `%u` without a username.
fn fill<'a>(pattern: &'a str, who: Principal<'_>) -> Option<Cow<'a, str>> {
    let filter = fill_levels(pattern, who)?;
    if filter.starts_with('$') && !pattern.starts_with('$') {
        return None;
    }
    Some(filter)
}

/// [`fill`] for some levels of a pattern (not necessarily its first).
fn fill_levels<'a>(pattern: &'a str, who: Principal<'_>) -> Option<Cow<'a, str>> {
    let unsafe_level = |s: &str| s.contains(['+', '#', '/']);
    let mut filter = Cow::Borrowed(pattern);
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
    Some(filter)
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
    fn substitution_never_reaches_dollar_topics() {
        let a = AclFile::parse(
            "pattern readwrite %c/#\npattern read %u/+/x\npattern read $SYS/%c/#\n",
            Path::new("acl"),
        )
        .unwrap();
        let sys = who(Some("$SYS"), "$SYS");
        assert!(!a.check_topic(sys, "$SYS/broker/version", Action::Read));
        assert!(!a.check_topic_linear(sys, "$SYS/broker/version", Action::Read));
        assert!(!a.check_subscribe(sys, "$SYS/#"));
        assert!(!a.check_subscribe(sys, "$SYS/broker/+"));
        assert!(!a.check_topic(sys, "$SYS/a/x", Action::Read));
        // An administrator's own `$` in the pattern stays as written.
        let c = who(None, "c7");
        assert!(a.check_topic(c, "$SYS/c7/load", Action::Read));
        assert!(a.check_subscribe(c, "$SYS/c7/#"));
        // The same patterns still serve ordinary identities.
        assert!(a.check_topic(who(Some("u"), "dev"), "dev/a", Action::Write));
        assert!(a.check_topic(who(Some("u"), "dev"), "u/a/x", Action::Read));
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
    fn the_index_agrees_with_the_rules_on_the_examples() {
        let a = acl();
        let principals = [
            who(None, "dev7"),
            who(Some("alice"), "a"),
            who(Some("cassiamqtt"), "gw1"),
            who(Some("bob"), "b1"),
            who(Some("bob/extra"), "x/y"),
            who(None, "+"),
        ];
        let topics = [
            "public/a",
            "alice/secret/k",
            "alice/x",
            "cassia/x/y",
            "devices/dev7/up",
            "devices/x/y/up",
            "users/bob/inbox",
            "$SYS/broker/uptime",
            "other",
        ];
        for w in principals {
            for t in topics {
                for action in [Action::Read, Action::Write] {
                    assert_eq!(
                        a.check_topic(w, t, action),
                        a.check_topic_linear(w, t, action),
                        "{w:?} {t} {action:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn many_rules_under_distinct_prefixes() {
        let mut text = String::new();
        for i in 0..999 {
            text.push_str(&format!("topic readwrite other/{i}/#\n"));
        }
        text.push_str("topic read #\npattern deny other/%c/x\n");
        let a = AclFile::parse(&text, Path::new("acl")).unwrap();
        let anon = who(None, "7");
        assert!(a.check_topic(anon, "bench/in/0", Action::Read));
        assert!(!a.check_topic(anon, "bench/in/0", Action::Write));
        assert!(a.check_topic(anon, "other/5/deep/er", Action::Write));
        assert!(
            a.check_topic(anon, "other/5", Action::Write),
            "`#` covers its parent"
        );
        assert!(!a.check_topic(anon, "other/1000/x", Action::Write));
        assert!(
            !a.check_topic(anon, "other/7/x", Action::Read),
            "the pattern denies"
        );
        assert!(a.check_topic(who(None, "8"), "other/7/x", Action::Read));
        assert!(!a.check_topic(anon, "$SYS/x", Action::Read));
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

    mod index_vs_linear {
        use super::*;
        use proptest::prelude::*;

        const LEVELS: &[&str] = &["a", "b", "", "$s", "+", "#", "%c", "%u", "x%c", "%u%c", "c"];
        const TOPIC_LEVELS: &[&str] = &["a", "b", "", "$s", "c", "xa", "x", "u", "%c", "%u", "xu"];
        const NAMES: &[Option<&str>] = &[
            None,
            Some("u"),
            Some("a"),
            Some("%c"),
            Some("b/c"),
            Some("+"),
            Some("$s"),
        ];
        const IDS: &[&str] = &["a", "c", "x", "u", "", "+", "%u", "b/c", "$s", "$"];

        fn filter() -> impl Strategy<Value = String> {
            prop::collection::vec(prop::sample::select(LEVELS), 1..5).prop_map(|levels| {
                // `#` only as the last level, as a valid filter has it.
                let mut out: Vec<&str> = Vec::new();
                for l in levels {
                    out.push(l);
                    if l == "#" {
                        break;
                    }
                }
                out.join("/")
            })
        }

        fn line() -> impl Strategy<Value = String> {
            let access = prop::sample::select(&["read", "write", "readwrite", "deny"][..]);
            prop_oneof![
                (access.clone(), filter()).prop_map(|(a, f)| format!("topic {a} {f}")),
                (access, filter()).prop_map(|(a, f)| format!("pattern {a} {f}")),
                prop::sample::select(&["u", "a", "%c"][..]).prop_map(|u| format!("user {u}")),
            ]
        }

        fn topic() -> impl Strategy<Value = String> {
            prop::collection::vec(prop::sample::select(TOPIC_LEVELS), 1..5)
                .prop_map(|levels| levels.join("/"))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]
            #[test]
            fn the_index_decides_as_the_linear_scan(
                lines in prop::collection::vec(line(), 0..24),
                topics in prop::collection::vec(topic(), 1..8),
            ) {
                let Ok(acl) = AclFile::parse(&lines.join("\n"), Path::new("acl")) else {
                    // Not every generated line is a valid rule.
                    return Ok(());
                };
                for name in NAMES {
                    for id in IDS {
                        let w = who(*name, id);
                        for t in &topics {
                            for action in [Action::Read, Action::Write] {
                                prop_assert_eq!(
                                    acl.check_topic(w, t, action),
                                    acl.check_topic_linear(w, t, action),
                                    "{:?} {} {:?}\n{}", w, t, action, lines.join("\n")
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}
