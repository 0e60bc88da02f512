//! Where a bundle comes from (a directory, or an HTTP(S) URL of one) and how
//! its files come down: into a download directory on the data partition,
//! resumed from where an interrupted run stopped, never more bytes than the
//! signed metadata says, and checked against its sha256 before use.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bpi_formats::update::{BundleFile, METADATA, METADATA_MAX};
use bpi_support::Steps;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Dir(PathBuf),
    Http(String),
}

impl Source {
    pub fn parse(s: &str) -> Result<Source> {
        if s.starts_with("http://") || s.starts_with("https://") {
            return Ok(Source::Http(s.trim_end_matches('/').to_string()));
        }
        if s.contains("://") {
            bail!("{s}: only http://, https:// and directories are update sources");
        }
        Ok(Source::Dir(PathBuf::from(s)))
    }

    pub fn describe(&self) -> String {
        match self {
            Source::Dir(d) => d.display().to_string(),
            Source::Http(u) => u.clone(),
        }
    }

    /// An open stream of `name` from byte `from`, and whether it starts there
    /// (a server may ignore a range and send the whole file).
    fn open(&self, name: &str, from: u64) -> Result<(Box<dyn Read>, bool)> {
        match self {
            Source::Dir(d) => {
                let p = d.join(name);
                let mut f = bpi_support::fsmode::open_regular(&p).with_context(|| format!("opening {}", p.display()))?;
                std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(from))?;
                Ok((Box::new(f), true))
            }
            Source::Http(base) => {
                let url = format!("{base}/{name}");
                let agent = ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(30)).timeout_read(Duration::from_secs(60)).build();
                let mut req = agent.get(&url);
                if from > 0 {
                    req = req.set("Range", &format!("bytes={from}-"));
                }
                let resp = match req.call() {
                    Ok(r) => r,
                    Err(ureq::Error::Status(code, r)) => bail!("{url}: the server answered {code} {}", r.status_text()),
                    Err(e) => bail!("{url}: {e}"),
                };
                let resumed = resp.status() == 206;
                Ok((Box::new(resp.into_reader()), from == 0 || resumed))
            }
        }
    }

    /// The signed metadata's bytes (at most [`METADATA_MAX`]).
    pub fn metadata(&self) -> Result<Vec<u8>> {
        let (r, _) = self.open(METADATA, 0).with_context(|| format!("no update metadata at {}", self.describe()))?;
        let mut bytes = Vec::new();
        r.take(METADATA_MAX + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > METADATA_MAX {
            bail!("{}/{METADATA} is larger than {METADATA_MAX} bytes: not update metadata", self.describe());
        }
        Ok(bytes)
    }

    /// Brings `file` into `dir`, resuming a partial download; returns its path
    /// once its size and sha256 are the metadata's.
    pub fn download(&self, file: &BundleFile, dir: &Path, steps: &Steps) -> Result<PathBuf> {
        let done = dir.join(&file.name);
        if done.is_file() && std::fs::metadata(&done)?.len() == file.size && bpi_support::digest::sha256_file(&done)? == file.sha256 {
            return Ok(done);
        }
        let part = dir.join(format!("{}.part", file.name));
        let mut have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
        if have >= file.size {
            have = 0;
        }
        let (mut r, from_offset) = self.open(&file.name, have)?;
        if !from_offset {
            have = 0;
        }
        let mut out = OpenOptions::new().create(true).write(true).truncate(false).open(&part).with_context(|| format!("creating {}", part.display()))?;
        out.set_len(have)?;
        std::io::Seek::seek(&mut out, std::io::SeekFrom::Start(have))?;
        if have > 0 {
            bpi_support::progress::note(&format!("resuming {} at byte {have} of {}", file.name, file.size));
        }
        let mut bar = steps.bytes(&format!("download {}", file.name), file.size);
        bar.add(have);
        let mut buf = vec![0u8; 1 << 20];
        let mut got = have;
        loop {
            let n = r.read(&mut buf).with_context(|| format!("downloading {} (run again to resume at byte {got})", file.name))?;
            if n == 0 {
                break;
            }
            if got + n as u64 > file.size {
                out.write_all(&buf[..(file.size - got) as usize])?;
                drop(out);
                let _ = std::fs::remove_file(&part);
                bail!("{} sent more than the {} bytes the signed metadata names for {}: refused", self.describe(), file.size, file.name);
            }
            out.write_all(&buf[..n])?;
            got += n as u64;
            bar.add(n as u64);
        }
        bar.finish();
        out.sync_all()?;
        if got < file.size {
            bail!("{} ended after {got} of {} bytes (truncated); run again to resume", file.name, file.size);
        }
        let sha = bpi_support::digest::sha256_file(&part)?;
        if sha != file.sha256 {
            let _ = std::fs::remove_file(&part);
            bail!("{}: sha256 {sha} is not the signed {}: the file was altered or corrupted, and is deleted", file.name, file.sha256);
        }
        std::fs::rename(&part, &done)?;
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bpi_formats::update::Role;

    fn file(name: &str, bytes: &[u8]) -> BundleFile {
        BundleFile { role: Role::Root, name: name.into(), size: bytes.len() as u64, sha256: bpi_support::digest::sha256_bytes(bytes) }
    }

    #[test]
    fn sources_parse() {
        assert_eq!(Source::parse("http://10.0.2.2:8080/u/").unwrap(), Source::Http("http://10.0.2.2:8080/u".into()));
        assert_eq!(Source::parse("/media/u").unwrap(), Source::Dir("/media/u".into()));
        assert!(Source::parse("ftp://x").is_err());
    }

    #[test]
    fn downloads_resume_and_refuse_wrong_sizes_and_bytes() {
        let src = tempfile::tempdir().unwrap();
        let dl = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(src.path().join("root"), &data).unwrap();
        let s = Source::Dir(src.path().into());
        let steps = Steps::new("test");
        // A partial file from an interrupted run is continued, not restarted.
        std::fs::write(dl.path().join("root.part"), &data[..1_000_000]).unwrap();
        let p = s.download(&file("root", &data), dl.path(), &steps).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), data);
        assert!(!dl.path().join("root.part").exists());
        // Done already: nothing is fetched again.
        std::fs::remove_file(src.path().join("root")).unwrap();
        s.download(&file("root", &data), dl.path(), &steps).unwrap();
        // More bytes than signed: refused.
        std::fs::write(src.path().join("big"), &data).unwrap();
        let e = s.download(&file("big", &data[..100]), dl.path(), &steps).unwrap_err().to_string();
        assert!(e.contains("sent more than"), "{e}");
        // Fewer: kept to resume.
        std::fs::write(src.path().join("short"), &data[..10]).unwrap();
        let e = s.download(&file("short", &data[..100]), dl.path(), &steps).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        assert_eq!(std::fs::metadata(dl.path().join("short.part")).unwrap().len(), 10);
        // Other bytes of the right size: refused and deleted.
        std::fs::write(src.path().join("bad"), vec![0u8; 100]).unwrap();
        let e = s.download(&file("bad", &data[..100]), dl.path(), &steps).unwrap_err().to_string();
        assert!(e.contains("altered or corrupted"), "{e}");
        assert!(!dl.path().join("bad.part").exists() && !dl.path().join("bad").exists());
    }
}
