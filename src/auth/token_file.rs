//! Scrape tokens checked against a file, typically a mounted Secret.
//! Kubernetes rotates a
//! mounted Secret by swapping a symlink, so the file is looked at again
//! (at most once a second) and re-read when its modification time or size
//! changes. The token never reaches a log line or an error message.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant, SystemTime},
};

use tracing::warn;

use super::{Verdict, bearer};

/// Why a token file cannot be used at start.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    /// The file cannot be read.
    #[error("--auth-token-file {path:?}: {reason}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        reason: String,
    },
    /// The file holds no token.
    #[error("--auth-token-file {path:?}: the file is empty")]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// How often the file's metadata is looked at, at most.
const RECHECK: Duration = Duration::from_secs(1);

/// The token as last read, and what the file looked like then.
struct Current {
    token: Vec<u8>,
    stamp: Option<(SystemTime, u64)>,
    checked: Instant,
}

/// A token file, re-read when it changes.
pub struct TokenFile {
    path: PathBuf,
    current: Mutex<Current>,
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// The token in a file's content: surrounding whitespace (a trailing newline) is not part of it.
fn token_of(content: &[u8]) -> &[u8] {
    content.trim_ascii()
}

fn read(path: &Path) -> Result<Vec<u8>, TokenFileError> {
    let content = fs::read(path).map_err(|e| TokenFileError::Unreadable {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let token = token_of(&content);
    if token.is_empty() {
        return Err(TokenFileError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(token.to_vec())
}

/// Equal without an early exit: the time taken does not tell how much of a guess matched.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl TokenFile {
    /// Reads the token once; an unreadable or empty file is a configuration error.
    pub fn open(path: &Path) -> Result<TokenFile, TokenFileError> {
        let token = read(path)?;
        Ok(TokenFile {
            path: path.to_path_buf(),
            current: Mutex::new(Current {
                token,
                stamp: stamp(path),
                checked: Instant::now(),
            }),
        })
    }

    /// Checks an `Authorization` header value against the current token.
    pub fn check(&self, authorization: Option<&[u8]>) -> Verdict {
        let Some(presented) = authorization.and_then(bearer) else {
            return Verdict::Missing;
        };
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        self.refresh(&mut current);
        if same(presented, &current.token) {
            Verdict::Allowed
        } else {
            Verdict::Invalid
        }
    }

    /// Re-reads the file if it changed. A file that became unreadable or
    /// empty keeps the previous token: a rotation half done must not open
    /// the endpoint, nor lock out every scraper.
    fn refresh(&self, current: &mut Current) {
        if current.checked.elapsed() < RECHECK {
            return;
        }
        current.checked = Instant::now();
        let now = stamp(&self.path);
        if now == current.stamp {
            return;
        }
        match read(&self.path) {
            Ok(token) => {
                current.token = token;
                current.stamp = now;
            }
            Err(e) => warn!(error = %e, "cannot reload the scrape token; keeping the previous one"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_requests_and_follows_a_rotated_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        fs::write(&path, "s3cret\n").unwrap();
        let file = TokenFile::open(&path).unwrap();
        assert_eq!(file.check(None), Verdict::Missing);
        assert_eq!(file.check(Some(b"Basic czNjcmV0")), Verdict::Missing);
        assert_eq!(file.check(Some(b"Bearer s3cret")), Verdict::Allowed);
        assert_eq!(file.check(Some(b"Bearer s3cre")), Verdict::Invalid);
        assert_eq!(file.check(Some(b"Bearer s3cret2")), Verdict::Invalid);

        // Rotated: the new token works once the file is looked at again, the old one no more.
        fs::write(&path, "n3w-token-longer").unwrap();
        file.current.lock().unwrap().checked = Instant::now() - RECHECK;
        assert_eq!(file.check(Some(b"Bearer n3w-token-longer")), Verdict::Allowed);
        assert_eq!(file.check(Some(b"Bearer s3cret")), Verdict::Invalid);

        // Emptied mid-rotation: the previous token stays.
        fs::write(&path, "").unwrap();
        file.current.lock().unwrap().checked = Instant::now() - RECHECK;
        assert_eq!(file.check(Some(b"Bearer n3w-token-longer")), Verdict::Allowed);
        assert_eq!(file.check(Some(b"Bearer ")), Verdict::Missing);
    }

    #[test]
    fn unusable_files_are_refused_at_start_without_their_content() {
        let dir = tempfile::tempdir().unwrap();
        let missing = TokenFile::open(&dir.path().join("nope")).err().unwrap();
        assert!(missing.to_string().contains("nope"), "{missing}");
        let empty = dir.path().join("empty");
        fs::write(&empty, " \n").unwrap();
        let err = TokenFile::open(&empty).err().unwrap();
        assert!(err.to_string().contains("empty"), "{err}");
    }
}
