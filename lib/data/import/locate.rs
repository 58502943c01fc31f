//! Finding a data set's IDX files under their standard names, in `$FLOWPIPE_DATA` or where the
//! system's packages put them.

use anyhow::bail;
use std::path::{Path, PathBuf};

use crate::Result;

/// Data sets that ship as IDX files under the standard names
/// (`train-images-idx3-ubyte.gz`, `t10k-labels-idx1-ubyte.gz`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Dataset {
    FashionMnist,
    Mnist,
    Kmnist,
}

impl Dataset {
    /// The folder name: `fashion-mnist`, `mnist`, `kmnist`.
    pub fn name(self) -> &'static str {
        match self {
            Dataset::FashionMnist => "fashion-mnist",
            Dataset::Mnist => "mnist",
            Dataset::Kmnist => "kmnist",
        }
    }

    /// Where to look, in order: `$FLOWPIPE_DATA/<name>/`, `$FLOWPIPE_DATA/`, and
    /// `/usr/share/datasets/<name>/` (where `apt-get install dataset-fashion-mnist` puts it).
    pub fn search_dirs(self, flowpipe_data: Option<&Path>) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        if let Some(d) = flowpipe_data {
            dirs.push(d.join(self.name()));
            dirs.push(d.to_path_buf());
        }
        dirs.push(Path::new("/usr/share/datasets").join(self.name()));
        dirs
    }

    /// [`Dataset::search_dirs`] with `$FLOWPIPE_DATA` from the environment (empty = unset).
    pub fn search_dirs_from_env(self) -> Vec<PathBuf> {
        let env = std::env::var_os("FLOWPIPE_DATA").filter(|v| !v.is_empty());
        self.search_dirs(env.as_deref().map(Path::new))
    }
}

/// A split of a data set: IDX files `train-*` (60,000 samples) or `t10k-*` (10,000).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    /// The file-name prefix of the split.
    pub fn prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }
}

/// Finds the (images, labels) IDX files of a split in the first of `dirs` that holds both,
/// gzipped or not. The error is one line saying where it looked and what to do.
pub fn locate(dataset: Dataset, split: Split, dirs: &[PathBuf]) -> Result<(PathBuf, PathBuf)> {
    let p = split.prefix();
    let find = |dir: &Path, stem: &str| {
        [format!("{stem}.gz"), stem.to_string()]
            .into_iter()
            .map(|f| dir.join(f))
            .find(|f| f.is_file())
    };
    for dir in dirs {
        let images = find(dir, &format!("{p}-images-idx3-ubyte"));
        let labels = find(dir, &format!("{p}-labels-idx1-ubyte"));
        if let (Some(i), Some(l)) = (images, labels) {
            return Ok((i, l));
        }
    }
    let looked = dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let install = match dataset {
        Dataset::FashionMnist => "run `apt-get install dataset-fashion-mnist` (as root), or ",
        _ => "",
    };
    bail!(
        "{} {p}-images-idx3-ubyte[.gz] and {p}-labels-idx1-ubyte[.gz] not found in {looked}: \
         {install}set FLOWPIPE_DATA to a folder holding {}/ with them, or pass --images and --labels",
        dataset.name(),
        dataset.name()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locate_finds_gzipped_or_plain_and_explains_absence() {
        let dir = tempfile::tempdir().unwrap();
        let fm = dir.path().join("fashion-mnist");
        std::fs::create_dir_all(&fm).unwrap();
        std::fs::write(fm.join("t10k-images-idx3-ubyte"), b"x").unwrap();
        std::fs::write(fm.join("t10k-labels-idx1-ubyte.gz"), b"x").unwrap();
        let dirs = Dataset::FashionMnist.search_dirs(Some(dir.path()));
        let (i, l) = locate(Dataset::FashionMnist, Split::Test, &dirs).unwrap();
        assert_eq!(i, fm.join("t10k-images-idx3-ubyte"));
        assert_eq!(l, fm.join("t10k-labels-idx1-ubyte.gz"));
        let err = locate(Dataset::FashionMnist, Split::Train, &dirs[..2])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("apt-get install dataset-fashion-mnist") && err.contains("FLOWPIPE_DATA"),
            "{err}"
        );
        assert!(!err.contains('\n'));
    }
}
