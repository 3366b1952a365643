//! Server-side apply as the API server does it (structured-merge-diff),
//! for the shapes the operator applies: field sets per field manager kept
//! in `metadata.managedFields` (FieldsV1), maps merged by key, lists with
//! `x-kubernetes-list-map-keys` merged by their keys (containers, env,
//! volumes by name, ports by port and protocol, ...), every other list
//! atomic; conflicts with other managers refused without `force` (409) and
//! taken over with it; a field dropped from a manager's applied config
//! removed from the object only when no other manager owns it. Updates
//! (PUT, merge and strategic merge patches) give the fields they change to
//! their manager and take them from everyone else.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

/// One step of a field path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pe {
    /// A field of a struct or a key of a map (`f:name`).
    Field(String),
    /// An item of a keyed list, by its key fields (`k:{"name":"x"}`).
    Key(String),
}

pub type Path = Vec<Pe>;
pub type Set = BTreeSet<Path>;

/// The keys of the lists that merge by key, by field name (and, for
/// `ports`, whether they are a container's or a Service's).
fn list_keys(path: &[Pe]) -> Option<&'static [&'static str]> {
    let Some(Pe::Field(last)) = path.last() else {
        return None;
    };
    let in_container = path.len() >= 2
        && matches!(&path[path.len() - 2], Pe::Key(_))
        && path.len() >= 3
        && matches!(&path[path.len() - 3], Pe::Field(f) if f.ends_with("ontainers"));
    Some(match last.as_str() {
        "containers" | "initContainers" | "ephemeralContainers" => &["name"],
        "env" | "volumes" | "imagePullSecrets" | "resourceClaims" => &["name"],
        "volumeMounts" => &["mountPath"],
        "ports" if in_container => &["containerPort", "protocol"],
        "ports" => &["port", "protocol"],
        "ownerReferences" => &["uid"],
        "conditions" => &["type"],
        "topologySpreadConstraints" => &["topologyKey", "whenUnsatisfiable"],
        "hostAliases" => &["ip"],
        _ => return None,
    })
}

/// Maps the API treats as one value (`x-kubernetes-map-type: atomic`).
fn atomic_map(path: &[Pe]) -> bool {
    matches!(path.last(), Some(Pe::Field(f)) if matches!(f.as_str(), "selector" | "labelSelector" | "nodeSelector" | "namespaceSelector" | "podSelector"))
}

/// The key of a keyed-list item, as FieldsV1 writes it (`{"name":"x"}`,
/// keys sorted, a missing `protocol` defaulted to TCP as the API server
/// defaults it before merging).
fn item_key(item: &Value, keys: &[&str]) -> String {
    let mut m = BTreeMap::new();
    for k in keys {
        let v = match item.get(*k) {
            Some(v) if !v.is_null() => v.clone(),
            _ if *k == "protocol" => json!("TCP"),
            _ => continue,
        };
        m.insert(k.to_string(), v);
    }
    serde_json::to_string(&m).unwrap_or_default()
}

/// Fields the API server never records as owned.
fn skipped(path: &[Pe]) -> bool {
    let f = |s: &str| Pe::Field(s.to_string());
    match path {
        [one] => [f("apiVersion"), f("kind")].contains(one),
        [m, one] if *m == f("metadata") => [
            "name",
            "namespace",
            "uid",
            "resourceVersion",
            "generation",
            "creationTimestamp",
            "managedFields",
            "deletionTimestamp",
            "selfLink",
        ]
        .iter()
        .any(|s| *one == f(s)),
        _ => false,
    }
}

/// The field set of an object (leaves, keyed-list items, empty maps).
pub fn fields(v: &Value, only: Option<&str>) -> Set {
    let mut out = Set::new();
    let mut path = Path::new();
    if let Value::Object(m) = v {
        for (k, child) in m {
            if only.is_some_and(|o| o != k) || (only.is_none() && k == "status") {
                continue;
            }
            path.push(Pe::Field(k.clone()));
            walk(child, &mut path, &mut out);
            path.pop();
        }
    }
    out
}

fn walk(v: &Value, path: &mut Path, out: &mut Set) {
    if skipped(path) || v.is_null() {
        return;
    }
    match v {
        Value::Object(m) if !atomic_map(path) => {
            if m.is_empty() {
                out.insert(path.clone());
            }
            for (k, child) in m {
                path.push(Pe::Field(k.clone()));
                walk(child, path, out);
                path.pop();
            }
        }
        Value::Array(items) if list_keys(path).is_some() => {
            let keys = list_keys(path).unwrap_or(&[]);
            if items.is_empty() {
                out.insert(path.clone());
            }
            for item in items {
                path.push(Pe::Key(item_key(item, keys)));
                out.insert(path.clone());
                if let Value::Object(m) = item {
                    for (k, child) in m {
                        path.push(Pe::Field(k.clone()));
                        walk(child, path, out);
                        path.pop();
                    }
                }
                path.pop();
            }
        }
        _ => {
            out.insert(path.clone());
        }
    }
}

/// The value at `path` (`None`: absent).
pub fn get<'a>(v: &'a Value, path: &[Pe]) -> Option<&'a Value> {
    let mut cur = v;
    for (i, pe) in path.iter().enumerate() {
        cur = match pe {
            Pe::Field(f) => cur.get(f)?,
            Pe::Key(k) => {
                let keys = list_keys(&path[..i])?;
                cur.as_array()?.iter().find(|it| item_key(it, keys) == *k)?
            }
        };
    }
    Some(cur)
}

/// Removes the value at `path`; maps and lists left empty by it go too.
fn remove(v: &mut Value, path: &[Pe]) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    let Some(p) = get_mut(v, parent) else {
        return;
    };
    match last {
        Pe::Field(f) => {
            if let Some(m) = p.as_object_mut() {
                m.remove(f);
            }
        }
        Pe::Key(k) => {
            let keys = list_keys(parent).unwrap_or(&[]);
            if let Some(a) = p.as_array_mut() {
                a.retain(|it| item_key(it, keys) != *k);
            }
        }
    }
    let empty = match p {
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    };
    if empty && !parent.is_empty() {
        remove(v, parent);
    }
}

fn get_mut<'a>(v: &'a mut Value, path: &[Pe]) -> Option<&'a mut Value> {
    let mut cur = v;
    for (i, pe) in path.iter().enumerate() {
        cur = match pe {
            Pe::Field(f) => cur.get_mut(f)?,
            Pe::Key(k) => {
                let keys = list_keys(&path[..i])?;
                cur.as_array_mut()?
                    .iter_mut()
                    .find(|it| item_key(it, keys) == *k)?
            }
        };
    }
    Some(cur)
}

/// Merges `cfg` into `live`: maps by key, keyed lists by item key (the
/// applied items first, in their order, then the others), everything else
/// replaced.
pub fn merge(live: &mut Value, cfg: &Value, path: &mut Path) {
    match cfg {
        Value::Object(c) if !atomic_map(path) => {
            if !live.is_object() {
                *live = Value::Object(Map::new());
            }
            for (k, v) in c {
                if v.is_null() {
                    continue;
                }
                path.push(Pe::Field(k.clone()));
                if let Some(l) = live.as_object_mut() {
                    merge(l.entry(k.clone()).or_insert(Value::Null), v, path);
                }
                path.pop();
            }
        }
        Value::Array(items) if list_keys(path).is_some() => {
            let keys = list_keys(path).unwrap_or(&[]);
            let mut old: Vec<Value> = live.as_array().cloned().unwrap_or_default();
            let mut out = Vec::new();
            for item in items {
                let k = item_key(item, keys);
                let mut base = match old.iter().position(|o| item_key(o, keys) == k) {
                    Some(i) => old.remove(i),
                    None => Value::Object(Map::new()),
                };
                path.push(Pe::Key(k));
                merge(&mut base, item, path);
                path.pop();
                out.push(base);
            }
            out.extend(old);
            *live = Value::Array(out);
        }
        other => *live = other.clone(),
    }
}

/// Strategic merge patch (what `kubectl patch`, `kubectl rollout restart`
/// send): a merge patch whose keyed lists merge by key.
pub fn strategic_merge(live: &mut Value, patch: &Value, path: &mut Path) {
    match patch {
        Value::Object(p) => {
            if !live.is_object() {
                *live = Value::Object(Map::new());
            }
            for (k, v) in p {
                let Some(l) = live.as_object_mut() else {
                    return;
                };
                if v.is_null() {
                    l.remove(k);
                    continue;
                }
                path.push(Pe::Field(k.clone()));
                strategic_merge(l.entry(k.clone()).or_insert(Value::Null), v, path);
                path.pop();
            }
        }
        Value::Array(items) if list_keys(path).is_some() => {
            let keys = list_keys(path).unwrap_or(&[]);
            let mut out: Vec<Value> = live.as_array().cloned().unwrap_or_default();
            for item in items {
                let k = item_key(item, keys);
                path.push(Pe::Key(k.clone()));
                match out.iter_mut().find(|o| item_key(o, keys) == k) {
                    Some(o) => strategic_merge(o, item, path),
                    None => out.push(item.clone()),
                }
                path.pop();
            }
            *live = Value::Array(out);
        }
        other => *live = other.clone(),
    }
}

/// One managedFields entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub manager: String,
    /// `Apply` or `Update`.
    pub operation: String,
    /// `""` or `status`.
    pub subresource: String,
    pub api_version: String,
    pub time: String,
    pub set: Set,
}

fn parse_tree(tree: &Value, path: &mut Path, out: &mut Set) {
    let Some(m) = tree.as_object() else {
        return;
    };
    if m.is_empty() && !path.is_empty() {
        out.insert(path.clone());
        return;
    }
    for (k, child) in m {
        if k == "." {
            out.insert(path.clone());
            continue;
        }
        let pe = if let Some(f) = k.strip_prefix("f:") {
            Pe::Field(f.to_string())
        } else if let Some(key) = k.strip_prefix("k:") {
            Pe::Key(key.to_string())
        } else {
            continue;
        };
        path.push(pe);
        parse_tree(child, path, out);
        path.pop();
    }
}

fn render_tree(set: &Set) -> Value {
    fn insert(node: &mut Map<String, Value>, path: &[Pe]) {
        let Some((first, rest)) = path.split_first() else {
            return;
        };
        let k = match first {
            Pe::Field(f) => format!("f:{f}"),
            Pe::Key(k) => format!("k:{k}"),
        };
        let child = node.entry(k).or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(m) = child {
            if rest.is_empty() {
                // A keyed item is owned itself as well as its fields.
                if matches!(first, Pe::Key(_)) {
                    m.insert(".".into(), json!({}));
                }
            } else {
                insert(m, rest);
            }
        }
    }
    let mut root = Map::new();
    for path in set {
        insert(&mut root, path);
    }
    Value::Object(root)
}

/// The entries stored on `obj`.
pub fn entries(obj: &Value) -> Vec<Entry> {
    obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let mut set = Set::new();
            parse_tree(&e["fieldsV1"], &mut Path::new(), &mut set);
            Entry {
                manager: e["manager"].as_str().unwrap_or_default().to_string(),
                operation: e["operation"].as_str().unwrap_or_default().to_string(),
                subresource: e["subresource"].as_str().unwrap_or_default().to_string(),
                api_version: e["apiVersion"].as_str().unwrap_or_default().to_string(),
                time: e["time"].as_str().unwrap_or_default().to_string(),
                set,
            }
        })
        .collect()
}

/// Writes `entries` to `obj.metadata.managedFields` (none: removed).
pub fn store_entries(obj: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.set.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager, "operation": e.operation, "apiVersion": e.api_version,
                "time": e.time, "fieldsType": "FieldsV1", "fieldsV1": render_tree(&e.set),
            });
            if !e.subresource.is_empty() {
                v["subresource"] = e.subresource.clone().into();
            }
            v
        })
        .collect();
    if let Some(m) = obj["metadata"].as_object_mut() {
        if list.is_empty() {
            m.remove("managedFields");
        } else {
            m.insert("managedFields".into(), Value::Array(list));
        }
    }
}

/// Whether `set` owns `path`, anything inside it, or a leaf above it.
fn touches(set: &Set, path: &Path) -> bool {
    set.iter()
        .any(|p| p.starts_with(path) || (path.starts_with(p) && p.len() < path.len()))
}

/// What a write is and who makes it.
pub struct Writer<'a> {
    pub manager: &'a str,
    pub subresource: &'a str,
    pub api_version: &'a str,
    pub now: &'a str,
}

/// An apply refused for conflicts: (manager, field path) pairs.
#[derive(Debug)]
pub struct Conflicts(pub Vec<(String, String)>);

impl Conflicts {
    pub fn message(&self) -> String {
        let n = self.0.len();
        let list: Vec<String> = self
            .0
            .iter()
            .map(|(m, p)| format!("conflict with \"{m}\": {p}"))
            .collect();
        format!(
            "Apply failed with {n} conflict{}: {}",
            if n == 1 { "" } else { "s" },
            list.join("; ")
        )
    }
}

pub fn dotted(path: &Path) -> String {
    path.iter()
        .map(|pe| match pe {
            Pe::Field(f) => format!(".{f}"),
            Pe::Key(k) => format!("[{k}]"),
        })
        .collect()
}

/// Server-side apply of `cfg` by `w` onto `live` (the object as stored,
/// `Value::Null` when it does not exist yet). Returns the new object with
/// its managedFields.
pub fn apply(live: &Value, cfg: &Value, w: &Writer, force: bool) -> Result<Value, Conflicts> {
    let only = (!w.subresource.is_empty()).then_some(w.subresource);
    let new_set = fields(cfg, only);
    let mut entries = entries(live);
    let mine = |e: &Entry| {
        e.manager == w.manager && e.operation == "Apply" && e.subresource == w.subresource
    };
    let old_set = entries
        .iter()
        .find(|e| mine(e))
        .map(|e| e.set.clone())
        .unwrap_or_default();

    // Conflicts: a field another manager owns, applied with another value.
    let mut conflicts = Vec::new();
    for p in &new_set {
        let theirs = get(live, p);
        let same = match (theirs, get(cfg, p)) {
            (Some(a), Some(b)) => matches!(p.last(), Some(Pe::Key(_))) || a == b,
            (None, _) => true,
            _ => false,
        };
        if same {
            continue;
        }
        for e in entries.iter().filter(|e| !mine(e)) {
            if e.set.contains(p) {
                conflicts.push((e.manager.clone(), dotted(p)));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(Conflicts(conflicts));
    }

    let mut obj = if live.is_null() {
        Value::Object(Map::new())
    } else {
        live.clone()
    };
    // Fields this manager applied before and no longer does: gone unless
    // someone else owns them (deepest first).
    let others: Vec<&Entry> = entries.iter().filter(|e| !mine(e)).collect();
    let mut dropped: Vec<&Path> = old_set.difference(&new_set).collect();
    dropped.sort_by_key(|p| std::cmp::Reverse(p.len()));
    let gone: Vec<&Path> = dropped
        .iter()
        .copied()
        .filter(|p| !new_set.iter().any(|n| n.starts_with(p)))
        .filter(|p| !others.iter().any(|e| touches(&e.set, p)))
        .collect();
    for p in &gone {
        // Inside something that goes as a whole, or an item's own key.
        let covered = gone.iter().any(|q| q.len() < p.len() && p.starts_with(q));
        let key_field = p.len() >= 2
            && matches!(p[p.len() - 2], Pe::Key(_))
            && matches!(&p[p.len() - 1], Pe::Field(f)
                if list_keys(&p[..p.len() - 2]).is_some_and(|k| k.contains(&f.as_str())));
        if !covered && !key_field {
            remove(&mut obj, p);
        }
    }
    match only {
        Some(sub) => merge(&mut obj[sub], &cfg[sub], &mut vec![Pe::Field(sub.into())]),
        None => merge(&mut obj, cfg, &mut Path::new()),
    }

    // Ownership: forced conflicts move to this manager.
    if force {
        for e in entries.iter_mut().filter(|e| !mine(e)) {
            for p in &new_set {
                let differs = get(live, p) != get(cfg, p);
                if differs {
                    e.set.remove(p);
                }
            }
        }
    }
    let time_changes = old_set != new_set;
    match entries.iter_mut().find(|e| mine(e)) {
        Some(e) => {
            e.set = new_set;
            if time_changes {
                e.time = w.now.to_string();
            }
        }
        None => entries.push(Entry {
            manager: w.manager.to_string(),
            operation: "Apply".into(),
            subresource: w.subresource.to_string(),
            api_version: w.api_version.to_string(),
            time: w.now.to_string(),
            set: new_set,
        }),
    }
    entries.retain(|e| !e.set.is_empty());
    store_entries(&mut obj, &entries);
    Ok(obj)
}

/// An update (create, PUT or a non-apply patch) by `w` from `old` to
/// `new`: the fields it set or changed become its own (operation Update)
/// and no one else's; fields it removed are no one's.
pub fn update(old: &Value, new: &mut Value, w: &Writer) {
    let only = (!w.subresource.is_empty()).then_some(w.subresource);
    let before = fields(old, only);
    let after = fields(new, only);
    let mut entries = entries(old);
    let changed: Set = after
        .iter()
        .filter(|p| !before.contains(*p) || get(old, p) != get(new, p))
        .cloned()
        .collect();
    let gone: Set = before.difference(&after).cloned().collect();
    for e in &mut entries {
        e.set.retain(|p| {
            let taken = changed.contains(p) && e.manager != w.manager;
            !gone.contains(p) && !taken
        });
    }
    if !changed.is_empty() {
        let mine = |e: &Entry| {
            e.manager == w.manager && e.operation == "Update" && e.subresource == w.subresource
        };
        match entries.iter_mut().find(|e| mine(e)) {
            Some(e) => {
                e.set.extend(changed);
                e.time = w.now.to_string();
            }
            None => entries.push(Entry {
                manager: w.manager.to_string(),
                operation: "Update".into(),
                subresource: w.subresource.to_string(),
                api_version: w.api_version.to_string(),
                time: w.now.to_string(),
                set: changed,
            }),
        }
    }
    entries.retain(|e| !e.set.is_empty());
    store_entries(new, &entries);
}
