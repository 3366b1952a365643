//! Who may connect (mosquitto password files) and what they may do
//! (mosquitto ACL files). Both formats are read unchanged so that existing
//! files carry over from mosquitto.

pub mod acl;
pub mod password;

use std::path::PathBuf;

/// A problem in an auth file, naming the file and line.
#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
}
