//! Scrape tokens checked against a file, typically a mounted Secret.
//!
//! Kubernetes rotates a mounted Secret by swapping a symlink, and other
//! tools rename a new file into place, or rewrite the file in place. The file
//! is read again at most once a second, and a change is a change of its
//! content (its SHA-256), not of its modification time or size. A new file
//! (another inode: a swap or a rename, which write atomically) is taken at
//! once; a file rewritten in place is taken only once it has been left alone
//! for [`SETTLE`]: its modification time that old, or the same new content
//! read at two looks that far apart (a modification time in the future
//! proves nothing). So a token written in place is never taken half written.
//! A token shorter than [`MIN_TOKEN_LEN`] is refused, at start and on
//! reload. The token never reaches a log line or an error message.

use std::{
    fs,
    io::Read,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant, SystemTime},
};

use tracing::{info, warn};

use super::{Verdict, bearer, lookups::Key};

/// The shortest token accepted: 16 bytes, 96 bits or more of a random
/// base64 or hex secret. Shorter ones can be guessed, or are a file caught
/// half-written.
pub const MIN_TOKEN_LEN: usize = 16;
/// A larger file is not a token file.
const MAX_FILE_LEN: u64 = 4096;
/// How often the file is read again, at most.
const RECHECK: Duration = Duration::from_secs(1);
/// A file rewritten in place is taken once unmodified for this long.
pub const SETTLE: Duration = Duration::from_secs(1);

/// Why a token file cannot be used.
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
    /// The token is too short to be a secret.
    #[error(
        "--auth-token-file {path:?}: the token has {len} bytes; at least {MIN_TOKEN_LEN} are required (e.g. `head -c 32 /dev/urandom | base64`)"
    )]
    TooShort {
        /// The file.
        path: PathBuf,
        /// The token's length.
        len: usize,
    },
    /// The file is too large to be a token file.
    #[error("--auth-token-file {path:?}: the file has more than {MAX_FILE_LEN} bytes; it is not a token")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
}

/// The file as read at one look.
struct Look {
    content: Vec<u8>,
    hash: Key,
    /// Device and inode: another one means another file, swapped or renamed in.
    file: (u64, u64),
    modified: Option<SystemTime>,
}

fn look(path: &Path) -> Result<Look, TokenFileError> {
    let unreadable = |e: std::io::Error| TokenFileError::Unreadable {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut f = fs::File::open(path).map_err(unreadable)?;
    let meta = f.metadata().map_err(unreadable)?;
    let mut content = Vec::new();
    // Bounded: a huge file (or a device) is not read whole.
    f.by_ref()
        .take(MAX_FILE_LEN + 1)
        .read_to_end(&mut content)
        .map_err(unreadable)?;
    if content.len() as u64 > MAX_FILE_LEN {
        return Err(TokenFileError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    Ok(Look {
        hash: super::lookups::key(&content),
        content,
        file: (meta.dev(), meta.ino()),
        modified: meta.modified().ok(),
    })
}

/// The token in a file's content: surrounding whitespace (a trailing newline) is not part of it.
fn token_of(path: &Path, content: &[u8]) -> Result<Vec<u8>, TokenFileError> {
    let token = content.trim_ascii();
    match token.len() {
        0 => Err(TokenFileError::Empty {
            path: path.to_path_buf(),
        }),
        len if len < MIN_TOKEN_LEN => Err(TokenFileError::TooShort {
            path: path.to_path_buf(),
            len,
        }),
        _ => Ok(token.to_vec()),
    }
}

/// Equal without an early exit: the time taken does not tell how much of a guess matched.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token in service and the file it came from.
struct Current {
    token: Vec<u8>,
    hash: Key,
    file: (u64, u64),
    checked: Instant,
    /// New content seen in place, and when first seen: taken once seen again [`SETTLE`] later.
    candidate: Option<(Key, Instant)>,
    /// True while the file cannot be used: warned once per streak.
    failing: bool,
}

/// A token file, read again when its content changes.
pub struct TokenFile {
    path: PathBuf,
    current: Mutex<Current>,
}

impl TokenFile {
    /// Reads the token once; an unreadable, empty or too short token is a configuration error.
    pub fn open(path: &Path) -> Result<TokenFile, TokenFileError> {
        let first = look(path)?;
        let token = token_of(path, &first.content)?;
        Ok(TokenFile {
            path: path.to_path_buf(),
            current: Mutex::new(Current {
                token,
                hash: first.hash,
                file: first.file,
                checked: Instant::now(),
                candidate: None,
                failing: false,
            }),
        })
    }

    /// Checks an `Authorization` header value against the current token.
    pub fn check(&self, authorization: Option<&[u8]>) -> Verdict {
        let Some(presented) = authorization.and_then(bearer) else {
            return Verdict::Missing;
        };
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        self.refresh(&mut current, Instant::now());
        if same(presented, &current.token) {
            Verdict::Allowed
        } else {
            Verdict::Invalid
        }
    }

    /// Reads the file again if it is time to. A file that cannot be used
    /// (unreadable, emptied, too short, being written) keeps the previous
    /// token: a rotation half done must not open the endpoint, nor lock out
    /// every scraper.
    fn refresh(&self, current: &mut Current, now: Instant) {
        if now.saturating_duration_since(current.checked) < RECHECK {
            return;
        }
        current.checked = now;
        let seen = match look(&self.path) {
            Ok(seen) => seen,
            Err(e) => return self.unusable(current, &e),
        };
        if seen.hash == current.hash {
            current.file = seen.file;
            // "Stable" means the same new content at consecutive looks.
            current.candidate = None;
            self.usable(current);
            return;
        }
        let replaced = seen.file != current.file;
        // Recorded whatever comes of it: a file swapped in unusable and then
        // rewritten in place is a rewrite in place.
        current.file = seen.file;
        let settled = seen
            .modified
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age >= SETTLE);
        let stable = current
            .candidate
            .is_some_and(|(hash, at)| hash == seen.hash && now.saturating_duration_since(at) >= SETTLE);
        if !replaced && !settled && !stable {
            // Being written in place, or just written: looked at again at the next look.
            if current.candidate.map(|(hash, _)| hash) != Some(seen.hash) {
                current.candidate = Some((seen.hash, now));
            }
            return;
        }
        current.candidate = None;
        match token_of(&self.path, &seen.content) {
            Ok(token) => {
                current.token = token;
                current.hash = seen.hash;
                current.file = seen.file;
                current.failing = false;
                info!(path = %self.path.display(), "scrape token file changed; the new token is in service");
            }
            Err(e) => self.unusable(current, &e),
        }
    }

    fn unusable(&self, current: &mut Current, e: &TokenFileError) {
        if !std::mem::replace(&mut current.failing, true) {
            warn!(error = %e, "cannot use the changed scrape token file; keeping the previous token until it is fixed");
        }
    }

    fn usable(&self, current: &mut Current) {
        if std::mem::replace(&mut current.failing, false) {
            info!(path = %self.path.display(), "scrape token file usable again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "old-token-0123456789";
    const NEW: &str = "new-token-abcdefghijkl";

    fn bearer(t: &str) -> Vec<u8> {
        format!("Bearer {t}").into_bytes()
    }

    /// Lets the next check read the file again.
    fn next_look(file: &TokenFile) {
        file.current.lock().unwrap().checked -= RECHECK;
    }

    /// Backdates the file's modification time past SETTLE.
    fn settle(path: &Path) {
        let f = fs::File::options().write(true).open(path).unwrap();
        f.set_modified(SystemTime::now() - SETTLE * 2).unwrap();
    }

    fn allowed(file: &TokenFile, token: &str) -> bool {
        file.check(Some(&bearer(token))) == Verdict::Allowed
    }

    #[test]
    fn checks_requests() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        fs::write(&path, format!("{OLD}\n")).unwrap();
        let file = TokenFile::open(&path).unwrap();
        assert_eq!(file.check(None), Verdict::Missing);
        assert_eq!(file.check(Some(b"Basic czNjcmV0")), Verdict::Missing);
        assert!(allowed(&file, OLD));
        assert_eq!(file.check(Some(&bearer(&OLD[..OLD.len() - 1]))), Verdict::Invalid);
        assert_eq!(file.check(Some(&bearer(&format!("{OLD}x")))), Verdict::Invalid);
    }

    #[test]
    fn an_atomic_rotation_is_taken_at_the_next_look() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        fs::write(&path, OLD).unwrap();
        let file = TokenFile::open(&path).unwrap();
        // As a tool that renames into place: a new inode, just written.
        let tmp = dir.path().join(".token.tmp");
        fs::write(&tmp, NEW).unwrap();
        fs::rename(&tmp, &path).unwrap();
        assert!(allowed(&file, OLD), "not looked at again within a second");
        next_look(&file);
        assert!(allowed(&file, NEW));
        assert!(!allowed(&file, OLD));
    }

    #[test]
    fn a_kubernetes_secret_symlink_swap_is_taken_at_the_next_look() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("..2026_a"), dir.path().join("..2026_b"));
        fs::create_dir(&a).unwrap();
        fs::create_dir(&b).unwrap();
        fs::write(a.join("token"), OLD).unwrap();
        fs::write(b.join("token"), NEW).unwrap();
        let data = dir.path().join("..data");
        std::os::unix::fs::symlink("..2026_a", &data).unwrap();
        let path = dir.path().join("token");
        std::os::unix::fs::symlink("..data/token", &path).unwrap();
        let file = TokenFile::open(&path).unwrap();
        assert!(allowed(&file, OLD));
        let tmp = dir.path().join("..data_tmp");
        std::os::unix::fs::symlink("..2026_b", &tmp).unwrap();
        fs::rename(&tmp, &data).unwrap();
        next_look(&file);
        assert!(allowed(&file, NEW));
        assert!(!allowed(&file, OLD));
    }

    #[test]
    fn a_file_rewritten_in_place_is_taken_once_settled_never_half_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        fs::write(&path, OLD).unwrap();
        let file = TokenFile::open(&path).unwrap();
        // Truncated and half written, in place: same inode, same size class.
        fs::write(&path, &NEW[..NEW.len() / 2 + 5]).unwrap();
        next_look(&file);
        assert!(allowed(&file, OLD), "a file being written keeps the old token");
        assert!(!allowed(&file, &NEW[..NEW.len() / 2 + 5]));
        // The writer finishes: still fresh, so still the old token.
        fs::write(&path, NEW).unwrap();
        next_look(&file);
        assert!(allowed(&file, OLD));
        // Left alone for SETTLE: taken.
        settle(&path);
        next_look(&file);
        assert!(allowed(&file, NEW));
        assert!(!allowed(&file, OLD));
        // A modification time in the future: taken once the same content is
        // read again SETTLE later, not before.
        let future = "future-token-0123456789";
        fs::write(&path, future).unwrap();
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(SystemTime::now() + Duration::from_secs(3600))
            .unwrap();
        next_look(&file);
        assert!(!allowed(&file, future));
        next_look(&file);
        assert!(!allowed(&file, future), "seen twice, but not SETTLE apart");
        file.current.lock().unwrap().candidate.as_mut().unwrap().1 -= SETTLE;
        next_look(&file);
        assert!(allowed(&file, future));
        // Same modification time and size, other content: still noticed.
        let same_len = NEW.replace('a', "b");
        fs::write(&path, &same_len).unwrap();
        settle(&path);
        next_look(&file);
        assert!(allowed(&file, &same_len));
    }

    #[test]
    fn a_file_swapped_in_unusable_then_rewritten_in_place_waits_to_settle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        fs::write(&path, OLD).unwrap();
        let file = TokenFile::open(&path).unwrap();
        let tmp = dir.path().join(".tmp");
        fs::write(&tmp, "").unwrap();
        fs::rename(&tmp, &path).unwrap();
        next_look(&file);
        assert!(allowed(&file, OLD));
        // Now written in place, half way: not a new file any more.
        let half = &NEW[..NEW.len() - 2];
        fs::write(&path, half).unwrap();
        next_look(&file);
        assert!(!allowed(&file, half));
        assert!(allowed(&file, OLD));
    }

    #[test]
    fn a_partial_content_seen_once_is_forgotten_when_the_file_returns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        fs::write(&path, OLD).unwrap();
        let file = TokenFile::open(&path).unwrap();
        // A rewrite in place caught half way, then complete again (the same token).
        let partial = &OLD[..OLD.len() - 2];
        fs::write(&path, partial).unwrap();
        next_look(&file);
        fs::write(&path, OLD).unwrap();
        next_look(&file);
        assert!(file.current.lock().unwrap().candidate.is_none());
        // Caught half way again, SETTLE later: not "stable", not taken.
        fs::write(&path, partial).unwrap();
        next_look(&file);
        assert!(!allowed(&file, partial));
        assert!(allowed(&file, OLD));
    }

    #[test]
    fn an_unusable_new_file_keeps_the_previous_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        fs::write(&path, OLD).unwrap();
        let file = TokenFile::open(&path).unwrap();
        for bad in ["", "  \n", "short", &"x".repeat(5000)] {
            fs::write(&path, bad).unwrap();
            settle(&path);
            next_look(&file);
            assert!(allowed(&file, OLD), "{:?}", &bad[..bad.len().min(10)]);
        }
        fs::remove_file(&path).unwrap();
        next_look(&file);
        assert!(allowed(&file, OLD));
        assert_eq!(file.check(Some(b"Bearer ")), Verdict::Missing);
    }

    #[test]
    fn unusable_files_are_refused_at_start_without_their_content() {
        let dir = tempfile::tempdir().unwrap();
        let missing = TokenFile::open(&dir.path().join("nope")).err().unwrap();
        assert!(missing.to_string().contains("nope"), "{missing}");
        let p = dir.path().join("t");
        for (content, says) in [
            (" \n", "empty"),
            ("s3cret-2short\n", "at least 16"),
            (&*"y".repeat(4097), "not a token"),
        ] {
            fs::write(&p, content).unwrap();
            let err = TokenFile::open(&p).err().unwrap().to_string();
            assert!(err.contains(says), "{err}");
            assert!(
                content.trim().is_empty() || !err.contains(content.trim()),
                "the content leaked: {err}"
            );
        }
    }
}
