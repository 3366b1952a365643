//! ConfigMap and Secret volumes as the kubelet keeps them: written when the
//! pod starts, and while it runs brought up to date in place whenever the
//! object changes (the operator's bridges and their credentials rely on
//! it: they change without a restart). The layout is the kubelet's
//! atomic writer's: the files live in a timestamped directory `..<stamp>`,
//! `..data` is a symlink to the current one, and each key is a symlink
//! `<key> -> ..data/<key>`; an update writes a new timestamped directory
//! and swaps `..data` with a rename, so a reader sees the old set or the
//! new one, never a mix, and the resolved file is a new inode (what the
//! broker's file watch polls for; an inotify watch on the old file would
//! see nothing).
//!
//! One liberty: mount paths in ConfigMap text (`/etc/raftmq/...`) are
//! rewritten to the pod's local directories, as the broker's own config is,
//! since the processes run on this machine's file system.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::kubelet::b64;
use super::NS;
use crate::api_double::ApiDouble;

/// A pod's mounts: (mount path, local directory), longest path first.
#[derive(Clone, Default)]
pub struct Mounts(pub Vec<(String, PathBuf)>);

impl Mounts {
    /// `s` with every mount path replaced by its local directory; through
    /// placeholders, as a local directory may itself contain a mount path
    /// (`/tmp`).
    pub fn local(&self, s: &str) -> String {
        let mut s = s.to_string();
        for (i, (path, _)) in self.0.iter().enumerate() {
            s = s.replace(path.as_str(), &format!("\u{1}{i}\u{1}"));
        }
        for (i, (_, dir)) in self.0.iter().enumerate() {
            s = s.replace(&format!("\u{1}{i}\u{1}"), &dir.display().to_string());
        }
        s
    }
}

enum Source {
    ConfigMap(String),
    /// The Secret, and its `items` (key -> path) when it lists some.
    Secret(String, Option<Vec<(String, String)>>),
}

/// One ConfigMap or Secret volume of a running pod.
pub struct Projected {
    pub name: String,
    dir: PathBuf,
    source: Source,
    /// What the directory holds now (file -> bytes).
    written: Option<BTreeMap<String, Vec<u8>>>,
}

impl Projected {
    /// The volume `v` projected into `dir`, if it is a ConfigMap or Secret.
    pub fn new(v: &Value, dir: PathBuf) -> Option<Projected> {
        let source = if let Some(cm) = v["configMap"]["name"].as_str() {
            Source::ConfigMap(cm.to_string())
        } else {
            let s = v["secret"]["secretName"].as_str()?;
            let items = v["secret"]["items"].as_array().map(|a| {
                a.iter()
                    .filter_map(|i| Some((i["key"].as_str()?.into(), i["path"].as_str()?.into())))
                    .collect()
            });
            Source::Secret(s.to_string(), items)
        };
        Some(Projected {
            name: v["name"].as_str().unwrap_or_default().to_string(),
            dir,
            source,
            written: None,
        })
    }

    /// The files the volume should hold now; `None` while its object is
    /// missing (the kubelet keeps what it wrote).
    fn wanted(&self, api: &ApiDouble, mounts: &Mounts) -> Option<BTreeMap<String, Vec<u8>>> {
        let mut files = BTreeMap::new();
        match &self.source {
            Source::ConfigMap(name) => {
                let obj = api.get("v1", "configmaps", NS, name)?;
                for (k, text) in obj["data"].as_object().into_iter().flatten() {
                    let text = mounts.local(text.as_str().unwrap_or_default());
                    files.insert(k.clone(), text.into_bytes());
                }
            }
            Source::Secret(name, items) => {
                let obj = api.get("v1", "secrets", NS, name)?;
                for (k, data) in obj["data"].as_object().into_iter().flatten() {
                    let file = match items {
                        Some(items) => match items.iter().find(|(key, _)| key == k) {
                            Some((_, p)) => p.clone(),
                            None => continue,
                        },
                        None => k.clone(),
                    };
                    files.insert(file, b64(data.as_str().unwrap_or_default()));
                }
            }
        }
        Some(files)
    }

    /// Brings the directory up to date with the API; true when it changed.
    pub fn sync(&mut self, api: &ApiDouble, mounts: &Mounts) -> bool {
        let Some(files) = self.wanted(api, mounts) else {
            return false;
        };
        if self.written.as_ref() == Some(&files) {
            return false;
        }
        write_atomically(&self.dir, &files, self.written.as_ref())
            .unwrap_or_else(|e| panic!("volume {}: {e}", self.dir.display()));
        self.written = Some(files);
        true
    }
}

/// The kubelet's atomic writer (see the module's comment).
fn write_atomically(
    dir: &Path,
    files: &BTreeMap<String, Vec<u8>>,
    before: Option<&BTreeMap<String, Vec<u8>>>,
) -> std::io::Result<()> {
    use std::os::unix::fs::symlink;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let stamp = format!("..{nanos}");
    let fresh = dir.join(&stamp);
    std::fs::create_dir_all(&fresh)?;
    for (k, v) in files {
        let path = fresh.join(k);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, v)?;
    }
    let data = dir.join("..data");
    let previous = std::fs::read_link(&data).ok();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(&stamp, &tmp)?;
    std::fs::rename(&tmp, &data)?;
    // The user-visible names: a link per top-level entry.
    let top = |k: &String| k.split('/').next().unwrap_or_default().to_string();
    for t in files.keys().map(top) {
        let link = dir.join(&t);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(format!("..data/{t}"), &link)?;
        }
    }
    for gone in before
        .into_iter()
        .flat_map(|b| b.keys().map(top))
        .filter(|t| !files.keys().any(|k| top(k) == *t))
    {
        let _ = std::fs::remove_file(dir.join(gone));
    }
    if let Some(p) = previous {
        let _ = std::fs::remove_dir_all(dir.join(p));
    }
    Ok(())
}
