//! Temporary folders that outlive a failing test.

use std::path::{Path, PathBuf};

use crate::Error;

/// A fresh temporary folder (`<tmp>/understudy-<label>-XXXXXX`), removed on
/// drop unless the thread is panicking: a failing test keeps its logs and
/// data to look at.
#[derive(Debug)]
pub struct TempDir {
    inner: Option<tempfile::TempDir>,
}

impl TempDir {
    /// Creates the folder.
    pub fn new(label: &str) -> Result<TempDir, Error> {
        let inner = tempfile::Builder::new()
            .prefix(&format!("understudy-{label}-"))
            .tempdir()
            .map_err(Error::io(
                "create a temporary folder in",
                std::env::temp_dir(),
            ))?;
        Ok(TempDir { inner: Some(inner) })
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        match &self.inner {
            Some(dir) => dir.path(),
            None => Path::new(""),
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(dir) = self.inner.take()
        {
            let kept = dir.keep();
            eprintln!("[testkit] kept {} for the failure", kept.display());
        }
    }
}

/// Where a process keeps its files: a caller's folder or its own temporary one.
#[derive(Debug)]
pub(crate) enum Home {
    Kept(PathBuf),
    Temporary(TempDir),
}

impl Home {
    pub(crate) fn new(dir: Option<&Path>, label: &str) -> Result<Home, Error> {
        match dir {
            Some(d) => {
                std::fs::create_dir_all(d).map_err(Error::io("create", d))?;
                Ok(Home::Kept(d.to_path_buf()))
            }
            None => Ok(Home::Temporary(TempDir::new(label)?)),
        }
    }

    pub(crate) fn is_temporary(&self) -> bool {
        matches!(self, Home::Temporary(_))
    }

    pub(crate) fn path(&self) -> &Path {
        match self {
            Home::Kept(p) => p,
            Home::Temporary(t) => t.path(),
        }
    }
}
