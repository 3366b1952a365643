//! The subscription tree against a brute-force model.
//!
//! An arbitrary sequence of subscribe / unsubscribe (plain and
//! `$share/group/...` filters with `+`, `#`, `$SYS`, empty levels) and match
//! queries. The model is a plain list of subscriptions and a matcher written
//! from the specification here, independently of the broker's own
//! `filter_matches` (which is checked against it too):
//! - `+` matches exactly one level, `#` is last and matches the parent level
//!   and any number of levels below it;
//! - a filter starting with a wildcard never matches a topic starting with
//!   `$`.
//!
//! Checked: insert/remove return values, `len`, the exact multiset of
//! matches (plain subscribers with their latest options, shared groups with
//! their members), `shared_group` lookups and round-robin rotation.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use raftmq::codec::{QoS, SubOptions};
use raftmq::topic_tree::{
    filter_matches, parse_filter, validate_filter, validate_topic_name, Hit, Subscriber,
    TopicLimits, TopicTree,
};

const LIMITS: TopicLimits = TopicLimits {
    max_levels: 8,
    max_length: 48,
};

/// Levels drawn from a small alphabet so that filters and topics collide.
const WORDS: [&str; 10] = ["a", "b", "c", "", "$SYS", "$share", "g", "sport", "x", "$"];

#[derive(Arbitrary, Debug)]
enum Level {
    Word(u8),
    Plus,
    Hash,
    /// Anything else (exercises validation; mostly refused).
    Raw(String),
}

#[derive(Arbitrary, Debug)]
struct FilterSpec {
    /// Shared group: index into `GROUPS`, or a raw name.
    group: Option<Result<u8, String>>,
    levels: Vec<Level>,
}

const GROUPS: [&str; 3] = ["g", "h", "sport"];

#[derive(Arbitrary, Debug)]
struct TopicSpec {
    levels: Vec<Result<u8, String>>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Subscribe {
        key: u8,
        filter: FilterSpec,
        qos: u8,
        identifier: Option<u32>,
    },
    Unsubscribe {
        key: u8,
        filter: FilterSpec,
    },
    /// Unsubscribe something the model holds (index modulo its length).
    UnsubscribeKnown(u16),
    Match(TopicSpec),
    SharedGroup(FilterSpec),
}

fn word(i: u8) -> &'static str {
    WORDS[usize::from(i) % WORDS.len()]
}

fn filter_string(f: &FilterSpec) -> String {
    let levels: Vec<String> = f
        .levels
        .iter()
        .take(10)
        .map(|l| match l {
            Level::Word(i) => word(*i).to_string(),
            Level::Plus => "+".to_string(),
            Level::Hash => "#".to_string(),
            Level::Raw(s) => s.clone(),
        })
        .collect();
    let filter = levels.join("/");
    match &f.group {
        None => filter,
        Some(Ok(i)) => format!("$share/{}/{filter}", GROUPS[usize::from(*i) % GROUPS.len()]),
        Some(Err(raw)) => format!("$share/{raw}/{filter}"),
    }
}

fn topic_string(t: &TopicSpec) -> String {
    let levels: Vec<&str> = t
        .levels
        .iter()
        .take(10)
        .map(|l| match l {
            Ok(i) => word(*i),
            Err(s) => s.as_str(),
        })
        .collect();
    levels.join("/")
}

/// The specification's matching rule, level by level.
fn model_matches(filter: &str, topic: &str) -> bool {
    let f: Vec<&str> = filter.split('/').collect();
    let t: Vec<&str> = topic.split('/').collect();
    if topic.starts_with('$') && (f[0] == "+" || f[0] == "#") {
        return false;
    }
    let mut i = 0;
    loop {
        match (f.get(i), t.get(i)) {
            // `#` is the last level: it takes this level and all below,
            // or none (the parent).
            (Some(&"#"), _) => return i + 1 == f.len(),
            (Some(&"+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
        i += 1;
    }
}

/// One subscription in the model.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    group: Option<String>,
    filter: String,
    key: u8,
    qos: u8,
    identifier: Option<u32>,
}

/// What one match yields, comparable between tree and model.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Seen {
    Plain {
        key: u8,
        filter: String,
        qos: u8,
        identifier: Option<u32>,
    },
    Shared {
        group: String,
        filter: String,
        /// (key, qos, identifier), sorted.
        members: Vec<(u8, u8, Option<u32>)>,
    },
}

fn options(qos: u8) -> SubOptions {
    SubOptions {
        qos: QoS::from_u8(qos % 3).unwrap_or_default(),
        ..SubOptions::default()
    }
}

fn members_of(list: &[Subscriber<u8, String>]) -> Vec<(u8, u8, Option<u32>)> {
    let mut m: Vec<_> = list
        .iter()
        .map(|s| (s.key, s.options.qos as u8, s.identifier))
        .collect();
    m.sort();
    m
}

fn model_members(model: &[Entry], group: &str, filter: &str) -> Vec<(u8, u8, Option<u32>)> {
    let mut m: Vec<_> = model
        .iter()
        .filter(|e| e.group.as_deref() == Some(group) && e.filter == filter)
        .map(|e| (e.key, e.qos, e.identifier))
        .collect();
    m.sort();
    m
}

fuzz_target!(|ops: Vec<Op>| {
    let mut tree: TopicTree<u8, String> = TopicTree::default();
    let mut model: Vec<Entry> = Vec::new();

    for op in ops.iter().take(256) {
        match op {
            Op::Subscribe {
                key,
                filter,
                qos,
                identifier,
            } => {
                let raw = filter_string(filter);
                let Ok(parsed) = parse_filter(&raw, LIMITS) else {
                    continue;
                };
                // The parsed filter itself is valid and has no share prefix.
                assert!(validate_filter(parsed.filter, LIMITS).is_ok(), "{raw}");
                let group = parsed.group.map(str::to_string);
                let f = parsed.filter.to_string();
                let sub = Subscriber {
                    key: *key,
                    value: f.clone(),
                    options: options(*qos),
                    identifier: *identifier,
                };
                let added = tree.insert(parsed.group, parsed.filter, sub);
                let entry = Entry {
                    group: group.clone(),
                    filter: f.clone(),
                    key: *key,
                    qos: qos % 3,
                    identifier: *identifier,
                };
                match model
                    .iter_mut()
                    .find(|e| e.group == group && e.filter == f && e.key == *key)
                {
                    Some(e) => {
                        assert!(!added, "insert of an existing {raw} said new");
                        *e = entry;
                    }
                    None => {
                        assert!(added, "insert of a new {raw} said replaced");
                        model.push(entry);
                    }
                }
            }
            Op::Unsubscribe { key, filter } => {
                let raw = filter_string(filter);
                let Ok(parsed) = parse_filter(&raw, LIMITS) else {
                    continue;
                };
                let removed = tree.remove(parsed.group, parsed.filter, key);
                let pos = model.iter().position(|e| {
                    e.group.as_deref() == parsed.group && e.filter == parsed.filter && e.key == *key
                });
                assert_eq!(removed, pos.is_some(), "remove {raw} key {key}");
                if let Some(i) = pos {
                    model.swap_remove(i);
                }
            }
            Op::UnsubscribeKnown(i) => {
                if model.is_empty() {
                    continue;
                }
                let e = model.swap_remove(usize::from(*i) % model.len());
                assert!(
                    tree.remove(e.group.as_deref(), &e.filter, &e.key),
                    "remove of held {e:?} failed"
                );
                assert!(
                    !tree.remove(e.group.as_deref(), &e.filter, &e.key),
                    "second remove of {e:?} succeeded"
                );
            }
            Op::Match(t) => {
                let topic = topic_string(t);
                if validate_topic_name(&topic, LIMITS).is_err() {
                    continue;
                }
                let mut got = Vec::new();
                tree.for_each_match(&topic, |hit| match hit {
                    Hit::Subscriber(s) => got.push(Seen::Plain {
                        key: s.key,
                        filter: s.value.clone(),
                        qos: s.options.qos as u8,
                        identifier: s.identifier,
                    }),
                    Hit::Shared(g) => {
                        assert!(!g.members.is_empty(), "empty shared group matched");
                        // Rotation yields every member exactly once.
                        let mut rot: Vec<_> = g.rotation().map(|s| s.key).collect();
                        rot.sort();
                        let mut keys: Vec<_> = g.members.iter().map(|s| s.key).collect();
                        keys.sort();
                        assert_eq!(rot, keys, "rotation of {}", g.name);
                        got.push(Seen::Shared {
                            group: g.name.to_string(),
                            filter: g.filter.to_string(),
                            members: members_of(&g.members),
                        })
                    }
                });
                got.sort();

                let mut want = Vec::new();
                for e in &model {
                    let m = model_matches(&e.filter, &topic);
                    assert_eq!(
                        filter_matches(&e.filter, &topic),
                        m,
                        "filter_matches({:?}, {topic:?})",
                        e.filter
                    );
                    if !m {
                        continue;
                    }
                    match &e.group {
                        None => want.push(Seen::Plain {
                            key: e.key,
                            filter: e.filter.clone(),
                            qos: e.qos,
                            identifier: e.identifier,
                        }),
                        Some(g) => {
                            let s = Seen::Shared {
                                group: g.clone(),
                                filter: e.filter.clone(),
                                members: model_members(&model, g, &e.filter),
                            };
                            if !want.contains(&s) {
                                want.push(s);
                            }
                        }
                    }
                }
                want.sort();
                assert_eq!(got, want, "matches of {topic:?}");
            }
            Op::SharedGroup(f) => {
                let raw = filter_string(f);
                let Ok(parsed) = parse_filter(&raw, LIMITS) else {
                    continue;
                };
                let Some(group) = parsed.group else {
                    continue;
                };
                let got = tree
                    .shared_group(group, parsed.filter)
                    .map(|g| members_of(&g.members))
                    .unwrap_or_default();
                assert_eq!(
                    got,
                    model_members(&model, group, parsed.filter),
                    "shared_group {raw}"
                );
            }
        }
        assert_eq!(tree.len(), model.len(), "len");
        assert_eq!(tree.is_empty(), model.is_empty(), "is_empty");
    }
});
