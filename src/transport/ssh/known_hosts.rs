//! Host key verification against an OpenSSH `known_hosts` file.
//!
//! The SSH client's only defence against a man in the middle is the server's
//! host key, so this follows OpenSSH's rules rather than russh's simpler
//! checker: comma-separated patterns with `*`/`?` wildcards and `!`
//! negation, hashed host names (`|1|salt|hash`, HMAC-SHA1 as
//! `HashKnownHosts` writes them), `[host]:port` for non-standard ports, and
//! `@revoked` markers. A host with recorded keys none of which match is a
//! *changed* key, whatever the algorithm — never silently "unknown".
//! `@cert-authority` lines are skipped: host certificates are not accepted.
//! Lines that do not parse are skipped, as OpenSSH does.

use russh::keys::ssh_key::known_hosts::{Entry, HostPatterns, Marker};
use russh::keys::{HashAlg, PublicKey};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

/// Most bytes of a known_hosts file we read (hostile or runaway files).
const MAX_FILE_BYTES: u64 = 16 << 20;

/// The outcome of looking a host key up.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HostKeyStatus {
    /// The key is recorded for this host.
    Known,
    /// Nothing is recorded for this host.
    Unknown,
    /// Other keys are recorded for this host: (line, "algorithm fingerprint") each.
    Changed(Vec<(usize, String)>),
    /// The key is listed as `@revoked` on this line.
    Revoked(usize),
}

/// The name a host is recorded under: `host`, or `[host]:port` off port 22.
pub(crate) fn host_token(host: &str, port: u16) -> String {
    let host = host.to_ascii_lowercase();
    if port == 22 {
        host
    } else {
        format!("[{host}]:{port}")
    }
}

/// `ssh-ed25519 SHA256:…`, as OpenSSH prints a key in its warnings.
pub(crate) fn describe_key(key: &PublicKey) -> String {
    format!("{} {}", key.algorithm(), key.fingerprint(HashAlg::Sha256))
}

fn read_entries(path: &Path) -> io::Result<Vec<(usize, Entry)>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut text = String::new();
    file.take(MAX_FILE_BYTES).read_to_string(&mut text)?;
    let mut entries = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // ssh-key splits fields on single spaces; OpenSSH accepts any blanks.
        let normalized = line.split_whitespace().collect::<Vec<_>>().join(" ");
        match normalized.parse::<Entry>() {
            Ok(entry) => entries.push((index + 1, entry)),
            Err(e) => {
                tracing::debug!(file = %path.display(), line = index + 1, error = %e, "skipping known_hosts line")
            }
        }
    }
    Ok(entries)
}

/// Looks `key` up for `host:port` in the file at `path` (a missing file is
/// an empty one).
pub(crate) fn check(path: &Path, host: &str, port: u16, key: &PublicKey) -> io::Result<HostKeyStatus> {
    let token = host_token(host, port);
    let mut others = Vec::new();
    let mut known = false;
    for (line, entry) in read_entries(path)? {
        if !host_matches(entry.host_patterns(), &token) {
            continue;
        }
        let same = entry.public_key().key_data() == key.key_data();
        match entry.marker() {
            Some(Marker::Revoked) if same => return Ok(HostKeyStatus::Revoked(line)),
            Some(_) => {}
            None if same => known = true,
            None => others.push((line, describe_key(entry.public_key()))),
        }
    }
    Ok(if known {
        HostKeyStatus::Known
    } else if others.is_empty() {
        HostKeyStatus::Unknown
    } else {
        HostKeyStatus::Changed(others)
    })
}

/// The key algorithms recorded for `host:port`, so the client can ask the
/// server for a key it can verify (OpenSSH orders `HostKeyAlgorithms` the
/// same way).
pub(crate) fn recorded_algorithms(path: &Path, host: &str, port: u16) -> Vec<russh::keys::Algorithm> {
    let token = host_token(host, port);
    let mut algs = Vec::new();
    for (_, entry) in read_entries(path).unwrap_or_default() {
        if entry.marker().is_none() && host_matches(entry.host_patterns(), &token) {
            let alg = entry.public_key().algorithm();
            if !algs.contains(&alg) {
                algs.push(alg);
            }
        }
    }
    algs
}

/// Appends `key` for `host:port` (trust on first use), creating the file
/// and its directory if needed.
pub(crate) fn append(path: &Path, host: &str, port: u16, key: &PublicKey) -> io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder.create(dir)?;
        }
    }
    let mut file = std::fs::OpenOptions::new().read(true).append(true).create(true).open(path)?;
    let mut needs_newline = false;
    if file.seek(SeekFrom::End(-1)).is_ok() {
        let mut last = [0u8; 1];
        file.read_exact(&mut last)?;
        needs_newline = last != *b"\n";
    }
    let mut key = key.clone();
    key.set_comment("");
    let encoded = key.to_openssh().map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    let line = format!("{}{} {}\n", if needs_newline { "\n" } else { "" }, host_token(host, port), encoded.trim());
    file.write_all(line.as_bytes())?;
    file.flush()
}

fn host_matches(patterns: &HostPatterns, token: &str) -> bool {
    match patterns {
        HostPatterns::HashedName { salt, hash } => {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, salt);
            ring::hmac::verify(&key, token.as_bytes(), hash).is_ok()
        }
        HostPatterns::Patterns(list) => {
            // OpenSSH `match_hostname`: a matching negated pattern vetoes the
            // whole entry; otherwise any positive match wins.
            let mut matched = false;
            for pattern in list {
                let pattern = pattern.to_ascii_lowercase();
                if let Some(negated) = pattern.strip_prefix('!') {
                    if glob(negated.as_bytes(), token.as_bytes()) {
                        return false;
                    }
                } else if glob(pattern.as_bytes(), token.as_bytes()) {
                    matched = true;
                }
            }
            matched
        }
    }
}

/// `*` and `?` wildcards, iteratively (no recursion on hostile patterns).
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || Some(&c) == text.get(t) => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern.get(p..).is_some_and(|rest| rest.iter().all(|&c| c == b'*'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";
    const KEY_B: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA6rWI3G1sz07DnfFlrouTcysQlj2P+jpNSOEWD9OJ3X";

    fn key(s: &str) -> PublicKey {
        s.parse().unwrap()
    }

    fn file(contents: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(contents.as_bytes()).unwrap();
        f
    }

    #[test]
    fn globs() {
        assert!(glob(b"*.example.com", b"a.example.com"));
        assert!(glob(b"10.0.0.?", b"10.0.0.7"));
        assert!(!glob(b"10.0.0.?", b"10.0.0.17"));
        assert!(glob(b"*", b""));
        assert!(glob(b"a*b*c", b"axxbyyc"));
        assert!(!glob(b"a*b*c", b"axxbyy"));
    }

    #[test]
    fn known_unknown_changed_revoked() {
        let f = file(&format!(
            "# comment\n[127.0.0.1]:2222 {KEY_A}\nother,!bad.host,*.host {KEY_B} c\n@revoked evil {KEY_A}\ngarbage line\n"
        ));
        let p = f.path();
        assert_eq!(check(p, "127.0.0.1", 2222, &key(KEY_A)).unwrap(), HostKeyStatus::Known);
        assert!(matches!(check(p, "127.0.0.1", 2222, &key(KEY_B)).unwrap(), HostKeyStatus::Changed(v) if v[0].0 == 2));
        assert_eq!(check(p, "127.0.0.1", 22, &key(KEY_A)).unwrap(), HostKeyStatus::Unknown);
        assert_eq!(check(p, "good.host", 22, &key(KEY_B)).unwrap(), HostKeyStatus::Known);
        assert_eq!(check(p, "bad.host", 22, &key(KEY_B)).unwrap(), HostKeyStatus::Unknown);
        assert_eq!(check(p, "EVIL", 22, &key(KEY_A)).unwrap(), HostKeyStatus::Revoked(4));
        assert_eq!(check(Path::new("/nonexistent/known_hosts"), "x", 22, &key(KEY_A)).unwrap(), HostKeyStatus::Unknown);
    }

    #[test]
    fn hashed_names() {
        // `ssh-keygen -H` of "[localhost]:13265" with a fixed salt.
        let salt = b"0123456789abcdef0123";
        let hmac = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, salt),
            b"[localhost]:13265",
        );
        let b64 = |b: &[u8]| {
            <russh::keys::ssh_key::encoding::base64::Base64 as russh::keys::ssh_key::encoding::base64::Encoding>::encode_string(b)
        };
        let line = format!("|1|{}|{} {KEY_A}\n", b64(salt), b64(hmac.as_ref()));
        let f = file(&line);
        assert_eq!(check(f.path(), "localhost", 13265, &key(KEY_A)).unwrap(), HostKeyStatus::Known);
        assert_eq!(check(f.path(), "localhost", 22, &key(KEY_A)).unwrap(), HostKeyStatus::Unknown);
    }

    #[test]
    fn append_then_known() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/known_hosts");
        append(&p, "h", 2200, &key(KEY_A)).unwrap();
        append(&p, "h", 22, &key(KEY_B)).unwrap();
        assert_eq!(check(&p, "h", 2200, &key(KEY_A)).unwrap(), HostKeyStatus::Known);
        assert_eq!(check(&p, "h", 22, &key(KEY_B)).unwrap(), HostKeyStatus::Known);
        assert_eq!(recorded_algorithms(&p, "h", 22), vec![russh::keys::Algorithm::Ed25519]);
    }
}
